"""All file I/O of the project, behind URIs: local paths (or file://) and s3://bucket/key.

Every write is atomic: local files go to a temporary name in the same folder and are renamed; S3
objects become visible only when the PUT (or multipart upload) completes. S3 goes through boto3 and
honours the usual environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`,
`AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` for S3-compatible stores).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from llm.errors import InputNotFound, UserError


class StorageError(OSError, UserError):
    """A storage problem a user can fix (missing credentials, missing bucket, unreadable path)."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _local(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def local_path(uri: str) -> Path:
    """The filesystem path of a local URI (a path or file://...); a ValueError for s3:// ones."""
    if is_s3(uri):
        raise ValueError(f"{uri} is not a local path")
    return _local(uri)


def _split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket in S3 URI")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Join URI parts with `/` (works for local paths and s3://)."""
    out = base.rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def relative(uri: str, base: str) -> str:
    """`uri` relative to the folder `base` when both are on the same filesystem or bucket (so records
    do not depend on where the work directory lives), else `uri` unchanged."""
    import posixpath

    if is_s3(uri) != is_s3(base):
        return uri
    if is_s3(uri):
        (b1, k1), (b2, k2) = _split_s3(uri), _split_s3(base)
        return posixpath.relpath(k1 or "/", k2 or "/") if b1 == b2 else uri
    return os.path.relpath(absolute(uri), absolute(base))


def absolute(uri: str) -> str:
    """Make a local path absolute (so Ray workers in other folders see the same file); S3 unchanged."""
    return uri if is_s3(uri) else str(_local(uri).resolve())


@lru_cache(maxsize=None)
def _s3_client():
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - boto3 is a core dependency
        raise StorageError("s3:// paths need boto3 (pip install boto3)") from exc
    session = boto3.session.Session()
    if session.get_credentials() is None:
        raise StorageError(_NO_CREDENTIALS)
    return session.client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}))


_NO_CREDENTIALS = ("no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE; "
                   "and AWS_ENDPOINT_URL for an S3-compatible store)")
# Codes of a request the store understood and refused for who is asking: the credentials are wrong
# or lack the permission, which the user fixes, not a retry.
_ACCESS_CODES = ("403", "AccessDenied", "Forbidden", "AllAccessDisabled")
_CREDENTIAL_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken")


def _s3(uri: str):
    """The S3 client, for a call about `uri`: missing credentials are reported naming its bucket."""
    try:
        return _s3_client()
    except StorageError as exc:
        bucket, _ = _split_s3(uri)
        raise StorageError(f"s3://{bucket}: {exc}") from None


def _s3_call(fn, uri: str, *args, **kwargs):
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    try:
        return fn(*args, **kwargs)
    except NoCredentialsError:
        raise StorageError(f"{uri}: {_NO_CREDENTIALS}") from None
    except EndpointConnectionError as exc:
        raise StorageError(f"{uri}: cannot reach the S3 endpoint ({exc})") from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise InputNotFound(f"{uri}: no such object") from None
        if code == "NoSuchBucket":
            raise StorageError(f"{uri}: bucket does not exist") from None
        if code in _ACCESS_CODES:
            raise StorageError(f"{uri}: access denied ({code}): the AWS credentials in use may not read or "
                               "write it (check AWS_PROFILE / AWS_ACCESS_KEY_ID and the bucket's policy)") from None
        if code in _CREDENTIAL_CODES:
            raise StorageError(f"{uri}: the AWS credentials are not valid for this store ({code}): check AWS_ACCESS_KEY_ID, "
                               "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and AWS_ENDPOINT_URL") from None
        raise StorageError(f"{uri}: S3 error {code}: {exc}") from None


# ---------------------------------------------------------------------------------------- queries


def exists(uri: str) -> bool:
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        try:
            _s3_call(_s3(uri).head_object, uri, Bucket=bucket, Key=key)
            return True
        except FileNotFoundError:
            return False
    return _local(uri).exists()


def size(uri: str) -> int:
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        return int(_s3_call(_s3(uri).head_object, uri, Bucket=bucket, Key=key)["ContentLength"])
    return _local(uri).stat().st_size


def stat_s3(uri: str) -> tuple[int, str]:
    """(size, ETag) of an S3 object: what identifies its content without reading it."""
    bucket, key = _split_s3(uri)
    head = _s3_call(_s3(uri).head_object, uri, Bucket=bucket, Key=key)
    return int(head["ContentLength"]), str(head.get("ETag", "")).strip('"')


def list_files(prefix: str, suffix: str = "", recursive: bool = True,
               skip_dirs: frozenset[str] = frozenset()) -> list[str]:
    """URIs of the files under a folder URI, sorted, optionally filtered by name suffix; folders named
    in `skip_dirs` are not descended into (a large site-packages under a stdlib folder, say)."""
    if is_s3(prefix):
        bucket, key = _split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        paginator = _s3(prefix).get_paginator("list_objects_v2")
        kwargs = {"Bucket": bucket, "Prefix": key}
        if not recursive:
            kwargs["Delimiter"] = "/"
        out = []
        for page in _s3_call(lambda: list(paginator.paginate(**kwargs)), prefix):
            for obj in page.get("Contents", []):
                parts = obj["Key"][len(key):].split("/")[:-1]
                if obj["Key"].endswith(suffix) and not skip_dirs.intersection(parts):
                    out.append(f"s3://{bucket}/{obj['Key']}")
        return sorted(out)
    root = _local(prefix)
    if not root.exists():
        return []
    if root.is_file():
        return [str(root)]
    if not recursive:
        return sorted(str(p) for p in root.iterdir() if p.is_file() and p.name.endswith(suffix))
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip_dirs]
        out.extend(os.path.join(folder, f) for f in files if f.endswith(suffix))
    return sorted(out)


# ------------------------------------------------------------------------------------------ reads


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        body = _s3_call(_s3(uri).get_object, uri, Bucket=bucket, Key=key)["Body"]
        return body.read()
    return _local(uri).read_bytes()


def read_text(uri: str, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


@contextmanager
def open_read(uri: str) -> Iterator[io.BufferedIOBase]:
    """A binary file object; S3 objects are streamed, local files opened directly."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        body = _s3_call(_s3(uri).get_object, uri, Bucket=bucket, Key=key)["Body"]
        try:
            yield body
        finally:
            body.close()
    else:
        with open(_local(uri), "rb") as fh:
            yield fh


class RangedFile(io.RawIOBase):
    """Bytes [start, end) of a file (local or S3) as a seekable read-only binary file; offsets are
    those of the whole file. Each fetch is one ranged read of at least `chunk` bytes. The last two
    fetched are kept: a reader that reads ahead a little and seeks back to the next record boundary
    (the WARC reader reads a gzip member in 1 MiB requests) then fetches every byte once, and a
    Parquet reader (chunk 0) fetches the footer and the column chunks it needs, not the whole object."""

    def __init__(self, uri: str, start: int = 0, end: int | None = None, chunk: int = 0):
        self.uri, self.start, self.chunk = uri, start, chunk
        self.end = size(uri) if end is None else end
        self.pos = start
        self.windows: list[tuple[int, bytes]] = []  # (offset, bytes) of the last fetches, newest last
        self.fetches = 0  # ranged reads made
        self.fetched = 0  # bytes they returned

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.end}[whence]
        self.pos = max(self.start, base + offset)
        return self.pos

    def _window(self, wanted: int) -> tuple[int, bytes]:
        for at, data in self.windows:
            if at <= self.pos < at + len(data):
                return at, data
        length = min(max(self.chunk, wanted), self.end - self.pos)
        window = (self.pos, read_range(self.uri, self.pos, length))
        self.fetches += 1
        self.fetched += len(window[1])
        self.windows = [*self.windows[-1:], window]
        return window

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self.pos < self.end:
            at, data = self._window(len(view) - done)
            part = data[self.pos - at: self.pos - at + len(view) - done]
            if not part:  # the object is shorter than it said
                break
            view[done: done + len(part)] = part
            done += len(part)
            self.pos += len(part)
        return done


def read_range(uri: str, start: int, length: int) -> bytes:
    """`length` bytes from offset `start` (fewer at the end of the file): one ranged GET on S3."""
    if length <= 0:
        return b""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        body = _s3_call(_s3(uri).get_object, uri, Bucket=bucket, Key=key,
                        Range=f"bytes={start}-{start + length - 1}")["Body"]
        try:
            return body.read()
        finally:
            body.close()
    with open(_local(uri), "rb") as fh:
        fh.seek(start)
        return fh.read(length)


@contextmanager
def parquet_file(uri: str) -> Iterator[pq.ParquetFile]:
    """A Parquet file opened for selective reads (footer, statistics, single row groups and columns):
    local files through the OS, S3 objects through ranged GETs."""
    if not is_s3(uri):
        pf = pq.ParquetFile(str(_local(uri)))
        try:
            yield pf
        finally:
            pf.close()
        return
    with RangedFile(uri) as raw:
        pf = pq.ParquetFile(raw)
        try:
            yield pf
        finally:
            pf.close()


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file as a table (`columns` in the order given). Read as one file, not through
    `pq.read_table`: that goes through pyarrow.dataset, whose first import (pandas with it) costs each
    process ~0.4 s, for a single file it reads the same way."""
    source = io.BytesIO(read_bytes(uri)) if is_s3(uri) else str(_local(uri))
    with pq.ParquetFile(source) as pf:
        return pf.read(columns=columns)


@contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local filesystem path holding the file's content (a download for S3; the file itself if local)."""
    if not is_s3(uri):
        yield str(_local(uri))
        return
    suffix = "".join(Path(uri).suffixes)
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="llmpipe-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(read_bytes(uri))
        yield tmp
    finally:
        os.unlink(tmp)


# ----------------------------------------------------------------------------------------- writes


def write_bytes(uri: str, data: bytes, durable: bool = True) -> str:
    """Atomically write bytes; returns the sha256 of what was written.

    `durable=False` is for scratch files of a run: no fsync and no digest (returns ""); the file still
    appears whole or not at all."""
    digest = hashlib.sha256(data).hexdigest() if durable else ""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        _s3_call(_s3(uri).put_object, uri, Bucket=bucket, Key=key, Body=data)
        return digest
    path = _local(uri)
    tmp = temp_beside(path, data, durable)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return digest


_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


def remove_temp_files(root: str) -> int:
    """Delete the temporary files (`temp_beside`) a killed writer left under a local folder; returns how
    many. Only for a folder no other writer is using (the work directory is locked). S3 has none: an
    object appears only when its upload completes."""
    if is_s3(root) or not _local(root).is_dir():
        return 0
    removed = 0
    for folder, _, files in os.walk(_local(root)):
        for name in files:
            if _TEMP_NAME.match(name):
                Path(folder, name).unlink(missing_ok=True)
                removed += 1
    return removed


def temp_beside(path: Path, data: bytes, durable: bool = True) -> Path:
    """`data` in a new hidden temporary file in `path`'s folder (created if needed), so a rename or link
    to `path` publishes it whole; fsynced when `durable`. The caller removes it if it is not used."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_text(uri: str, text: str) -> str:
    return write_bytes(uri, text.encode("utf-8"))


def upload_file(local_path: str, uri: str) -> None:
    """Copy a local file to a URI atomically (multipart upload for large S3 objects)."""
    if is_s3(uri):
        bucket, key = _split_s3(uri)
        _s3_call(_s3(uri).upload_file, uri, local_path, bucket, key)
        return
    dest = _local(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    shutil.copyfile(local_path, tmp)
    os.replace(tmp, dest)


def upload_dir(local_dir: str, uri: str) -> None:
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            upload_file(str(path), join(uri, str(path.relative_to(local_dir))))


def download_dir(uri: str, local_dir: str) -> None:
    """Make `local_dir` a copy of the folder `uri`, atomically: the files go to a temporary sibling
    folder, which then takes `local_dir`'s place (see `replace_dir`), so a reader (or a download killed
    half-way) never sees a folder with part of the files. An existing `local_dir` is replaced, files
    that `uri` does not have included; an empty or missing `uri` gives an empty folder."""
    dest = _local(local_dir)
    recover_dir(str(dest))
    tmp = _temp_sibling(dest)
    try:
        tmp.mkdir(parents=True)
        prefix = uri.rstrip("/")
        for file_uri in list_files(prefix):
            rel = file_uri[len(prefix):].lstrip("/")
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(read_bytes(file_uri))
        _swap_in(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# A folder being replaced is moved to this sibling name for the instant between the two renames of
# `_swap_in`; the name is fixed (not random) so that `recover_dir` can find it after a crash.
def _aside(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.replaced")


def _temp_sibling(dest: Path) -> Path:
    # Same parent as `dest`: a rename within one filesystem is atomic, across filesystems it fails.
    return dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _swap_in(complete: Path, dest: Path) -> None:
    """Put the complete folder `complete` at `dest`: old aside, new in, old deleted. At every instant
    `dest` is the old folder or the new one, except between the two renames, when the old one is at
    `_aside(dest)` (which `recover_dir` puts back)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    aside = _aside(dest)
    if dest.exists() or dest.is_symlink():
        os.rename(dest, aside)
    os.rename(complete, dest)
    _remove(aside)


def recover_dir(uri: str) -> bool:
    """Repair a local folder left by a `replace_dir` / `download_dir` killed between its two renames:
    when `uri` is missing and its old copy is still aside (`.<name>.replaced` beside it), the old copy
    is put back; when both exist, the aside copy is leftover garbage and is deleted. Returns whether
    the old copy was restored. Both functions call this first, so calling it by hand is only needed
    to read the folder before the next replace. S3 needs no repair (nothing is deleted before the new
    content is complete). Not safe against a concurrent replace of the same folder: one writer per
    folder (the work directory lock sees to that). A crash while copying leaves a hidden
    `.<name>.<id>.tmp` sibling, which is incomplete and safe to delete."""
    if is_s3(uri):
        return False
    dest = _local(uri)
    aside = _aside(dest)
    if not (aside.exists() or aside.is_symlink()):
        return False
    if dest.exists() or dest.is_symlink():
        _remove(aside)
        return False
    os.rename(aside, dest)
    return True


def replace_dir(local_dir: str, uri: str) -> None:
    """Make the folder `uri` hold exactly the files of the local folder `local_dir`, without ever
    deleting the old content before the new content is complete (a checkpoint killed half-way must
    leave the previous checkpoint, not nothing).

    Local `uri`: the folder is copied to a temporary sibling, which then takes `uri`'s place with two
    renames (see `recover_dir` for a crash between them). S3: every new file is uploaded first (each
    PUT is atomic, so a key holds the old bytes or the new ones), then the old keys the new content
    does not have are deleted; a reader during the upload can see a mix of old and new files, so
    write a marker file last (as `state.json` is) when that matters."""
    src = Path(local_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"{local_dir}: not a folder")
    if not is_s3(uri):
        dest = _local(uri)
        recover_dir(str(dest))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_sibling(dest)
        try:
            shutil.copytree(src, tmp)
            _swap_in(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return
    prefix = uri.rstrip("/")
    old = set(list_files(prefix))
    new = set()
    for path in sorted(src.rglob("*")):
        if path.is_symlink() and not path.exists():
            # As the local copy does: a folder with a file that cannot be read is not new content
            # complete enough to replace the old with.
            raise FileNotFoundError(f"{path}: broken link in {local_dir}")
        if path.is_file():
            file_uri = join(prefix, str(path.relative_to(src)))
            upload_file(str(path), file_uri)
            new.add(file_uri)
    _delete_s3_keys(sorted(old - new), prefix)


def _delete_s3_keys(uris: list[str], where: str) -> None:
    client = _s3(where)
    for start in range(0, len(uris), 1000):  # DeleteObjects takes at most 1000 keys
        batch = [_split_s3(u) for u in uris[start:start + 1000]]
        bucket = batch[0][0]
        reply = _s3_call(client.delete_objects, where, Bucket=bucket,
                         Delete={"Objects": [{"Key": k} for _, k in batch], "Quiet": True})
        if reply.get("Errors"):
            err = reply["Errors"][0]
            raise StorageError(f"s3://{bucket}/{err.get('Key')}: could not delete ({err.get('Code')}: "
                               f"{err.get('Message')})")


def write_parquet(uri: str, table: pa.Table, row_group_rows: int = 1024, compression: str = "zstd") -> tuple[int, str]:
    """Atomically write a table as Parquet; returns (bytes written, sha256).

    Written into memory first: shards are bounded by configuration, and this makes the bytes (and so
    the digest) independent of the destination, which is what byte-identical reruns need.
    """
    buf = io.BytesIO()
    pq.write_table(
        table,
        buf,
        row_group_size=row_group_rows,
        compression=None if compression == "none" else compression,
        write_statistics=True,
    )
    data = buf.getvalue()
    return len(data), write_bytes(uri, data)


def delete(uri: str) -> None:
    """Remove a file or a whole folder (recursively); missing paths are fine."""
    if is_s3(uri):
        for file_uri in list_files(uri) + ([uri] if exists(uri) else []):
            bucket, key = _split_s3(file_uri)
            _s3_call(_s3(file_uri).delete_object, file_uri, Bucket=bucket, Key=key)
        return
    path = _local(uri)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def makedirs(uri: str) -> None:
    if not is_s3(uri):
        _local(uri).mkdir(parents=True, exist_ok=True)
