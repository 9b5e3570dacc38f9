"""What ingest's inputs are: each file's name, size and content digest (S3: its ETag), and the grouping of
files into input shards by content, so adding or removing a file changes only the shards it falls in.

Local digests are sha256 of the bytes, remembered in a cache beside the output keyed by (path, size,
modification time), so a nightly refresh over a large, mostly unchanged corpus reads only new files.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from llm import storage
from llm.config import stable_hash

_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class InputFile:
    """One input file as identity sees it: where it is, its path inside the source, size and digest."""

    uri: str
    rel: str
    size: int
    digest: str

    def fingerprint(self) -> list:
        return [self.rel, self.size, self.digest]


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class DigestCache:
    """(path, size, mtime_ns) -> sha256 of local files, stored as JSON under the dataset it serves."""

    def __init__(self, uri: str | None):
        self.uri = uri
        self.entries: dict[str, list] = {}
        if uri and storage.exists(uri):
            try:
                self.entries = json.loads(storage.read_text(uri))
            except ValueError:  # a damaged cache only costs reading the files again
                self.entries = {}
        self.used: dict[str, list] = {}

    def digest(self, path: str) -> tuple[int, str]:
        st = os.stat(path)
        hit = self.entries.get(path)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            digest = hit[2]
        else:
            digest = _sha256_file(path)
        self.used[path] = [st.st_size, st.st_mtime_ns, digest]
        return st.st_size, digest

    def save(self) -> None:
        """Keep the entries of the files seen this time (so the cache never outgrows the inputs)."""
        if self.uri and self.used != self.entries:
            storage.write_text(self.uri, json.dumps(self.used, sort_keys=True))


def describe(uris: list[str], root: str, cache: DigestCache) -> list[InputFile]:
    """`InputFile`s of `uris` (all under `root`), in the given order."""

    def one(uri: str) -> InputFile:
        rel = uri[len(root):].lstrip("/") if uri.startswith(root) else uri.rsplit("/", 1)[-1]
        rel = rel or uri.rsplit("/", 1)[-1]
        if storage.is_s3(uri):
            size, etag = storage.stat_s3(uri)
            return InputFile(uri, rel, size, f"etag:{etag}")
        try:
            size, digest = cache.digest(uri)
        except OSError as exc:  # no permission, a broken link: the reader quarantines the file
            return InputFile(uri, rel, _size_or_zero(uri), f"unreadable:{type(exc).__name__}")
        return InputFile(uri, rel, size, digest)

    if not uris:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(uris))) as pool:
        return list(pool.map(one, uris))


def _size_or_zero(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def content_groups(files: list[InputFile], per_group: int) -> list[list[InputFile]]:
    """Cut the sorted file list where a file's path hash says so (about one cut every `per_group` files),
    so a file added or removed changes only the group it falls in, never the groups after it. A group
    never exceeds four times `per_group` files, which bounds a shard's memory."""
    if per_group <= 1:
        return [[f] for f in files]
    groups: list[list[InputFile]] = []
    current: list[InputFile] = []
    for f in files:
        current.append(f)
        cut = int(hashlib.blake2b(f.rel.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest(), 16)
        if cut % per_group == 0 or len(current) >= 4 * per_group:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def group_name(source: str, group: list[InputFile]) -> str:
    """A shard named by what it holds: the source, then a digest of its files' paths, sizes and digests."""
    return f"{source}-{stable_hash([f.fingerprint() for f in group])[:12]}"
