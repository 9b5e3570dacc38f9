"""Input planning and reading: sources become input units, units become raw documents.

`plan_inputs` cuts every configured source into units (one per WARC/JSONL/Parquet file, a group of
files for code), deterministically. `read_unit` yields, for one unit, raw documents (`RAW_SCHEMA`
field names) and quarantine entries (`QUARANTINE_SCHEMA` field names) for input that cannot be read;
`is_quarantine` tells them apart. Each format has its reader (`warc_reader`: WARC/ARC; `text_readers`:
code, JSONL, Parquet); what they share (`InputUnit`, the record builders) is in `raw_records`. Ids come
from the source name, the file's path relative to the unit's root and the record's offset/line/row, so
they are the same on every rerun and machine.
"""

from __future__ import annotations

import fnmatch
import logging
import sysconfig
from dataclasses import dataclass, field
from typing import Iterator

from llm import storage
from llm.config import SourceConfig
from llm.data.raw_records import (InputUnit, SourceSkipped, _describe, _file_size, _head, _quarantine, is_quarantine,
                                  printable)
from llm.data.sources import arxiv, commoncrawl, feed, gutenberg
from llm.data.sources.git import plan_repository, read_repository
from llm.data.text_readers import _read_code, _read_jsonl, _read_parquet, coding_cookie
from llm.data.warc_reader import _read_warc
from llm.errors import InputNotFound, UserError

# Imported from here by the ingest stage, tools and tests.
__all__ = ["DEFAULT_PATTERNS", "STDLIB_EXCLUDED_DIRS", "InputUnit", "SourcePlan", "coding_cookie", "is_quarantine",
           "plan_inputs", "plan_sources", "printable", "read_unit"]

log = logging.getLogger(__name__)

DEFAULT_PATTERNS = {
    "crawl": ("*.warc.gz",),
    "warc": ("*.warc.gz", "*.warc", "*.arc", "*.arc.gz"),
    "jsonl": ("*.jsonl", "*.jsonl.gz"),
    "parquet": ("*.parquet",),
    "code": ("*.py",),
    "arxiv": arxiv.DEFAULT_PATTERNS,
    "gutenberg": gutenberg.DEFAULT_PATTERNS,
    "feed": feed.DEFAULT_PATTERNS,
}
# Parts of the standard library left out of the default code source: `test`/`tests` are the test
# suite (a large share of all stdlib lines, with deliberately broken files: bad encodings, syntax
# errors), `idlelib` is a GUI application, `lib2to3` carries Python 2 grammar fixtures, and
# `site-packages` holds third-party code, not the standard library.
STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3"})


# ------------------------------------------------------------------------------------------ planning


@dataclass
class SourcePlan:
    """What planning made of the configured sources: their units, and the sources it left out (name ->
    the reason, as warned), which the ingest manifest records."""

    units: list[InputUnit] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def by_source(self) -> dict[str, dict]:
        """Per source name: its unit count, and `skipped` with the reason where it was left out."""
        out = {}
        for unit in self.units:
            out.setdefault(unit.source.name, {"units": 0})["units"] += 1
        out.update({name: {"units": 0, "skipped": reason} for name, reason in self.skipped.items()})
        return out


def plan_inputs(sources: list[SourceConfig], crawl_uri: str, digest_cache: str | None = None) -> list[InputUnit]:
    """Units for every source, in source order then file path (`plan_sources`, without what it skipped)."""
    return plan_sources(sources, crawl_uri, digest_cache).units


def plan_sources(sources: list[SourceConfig], crawl_uri: str, digest_cache: str | None = None) -> SourcePlan:
    """Units for every source, in source order then file path; each named by the files it holds, so
    adding or removing a file changes only the unit it falls in. `digest_cache` (a JSON file) keeps
    local files' digests between runs. A source that is absent where its config allows that
    (`SourceSkipped`) gets one warning line and is listed in the plan's `skipped`."""
    from llm.data.input_files import DigestCache, content_groups, describe, group_name

    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"source names must be unique (they prefix shard names and ids): {duplicates}")
    cache = DigestCache(digest_cache)
    plan = SourcePlan()
    units = plan.units  # filled in place
    for source in sources:
        if source.kind == "git":  # a repository's files are listed from a commit, not a folder
            try:
                units += plan_repository(source)
            except SourceSkipped as skip:
                log.warning("%s", skip)
                plan.skipped[source.name] = str(skip)
            continue
        if source.kind == "commoncrawl":  # files named by a dump's paths listing or CDX records
            units += commoncrawl.plan_commoncrawl(source)
            continue
        # A feed's new entries are first fetched into capture files, which are then its input files.
        if source.kind == "feed":
            root, files = feed.plan_captures(source, crawl_uri)
        else:
            root, files = _source_files(source, crawl_uri)
        per_unit = source.files_per_shard if source.kind == "code" else 1
        for group in content_groups(describe(files, root, cache), per_unit):
            units.append(InputUnit(group_name(source.name, group), source, tuple(f.uri for f in group), root,
                                   tuple(tuple(f.fingerprint()) for f in group)))
    cache.save()
    return plan


def _crawl_files(crawl_uri: str) -> list[str] | None:
    """The WARC files of the crawl's current version, in crawl order; None when no crawl manifest exists
    (a folder of WARC files written some other way is then listed like any other)."""
    from llm import versions

    try:
        manifest = versions.read(crawl_uri)
    except FileNotFoundError:
        return None
    return [storage.join(crawl_uri, rel) for rel in manifest.get("warc_files", [])]


def _source_files(source: SourceConfig, crawl_uri: str) -> tuple[str, list[str]]:
    """(root, sorted file URIs) of one source."""
    if source.kind == "crawl":
        uri = crawl_uri
        listed = _crawl_files(storage.absolute(uri).rstrip("/"))
        if listed is not None:
            if not listed:
                raise UserError(f"source {source.name!r} (crawl): the crawl at {uri} wrote no WARC file")
            return storage.absolute(uri).rstrip("/"), listed
    elif source.kind == "code" and source.uri is None:
        uri = sysconfig.get_paths()["stdlib"]
    elif source.uri is None:
        raise UserError(f"source {source.name!r} ({source.kind}): `uri` is required")
    else:
        uri = source.uri
    uri = storage.absolute(uri).rstrip("/")
    stdlib_default = source.kind == "code" and source.uri is None
    listed = storage.list_files(uri, skip_dirs=STDLIB_EXCLUDED_DIRS if stdlib_default else frozenset())
    # A single file (an S3 object is not a prefix, so it lists nothing): its folder is the root and
    # the pattern does not apply.
    if listed == [uri] or (not listed and storage.is_s3(uri) and storage.exists(uri)):
        return uri.rsplit("/", 1)[0], [uri]
    if not listed and not storage.exists(uri):
        raise InputNotFound(f"source {source.name!r} ({source.kind}): {uri} does not exist")
    patterns = (source.glob,) if source.glob else DEFAULT_PATTERNS[source.kind]
    root = uri
    files = []
    for path in listed:
        rel = path[len(root):].lstrip("/")
        parts = rel.split("/")
        if stdlib_default and STDLIB_EXCLUDED_DIRS.intersection(parts[:-1]):
            continue
        if any(part.startswith(".") for part in parts):  # hidden files and folders: .git, temp files
            continue
        if any(_matches(rel, p) for p in patterns):
            files.append(path)
    files.sort()
    if source.max_files is not None:
        files = files[: source.max_files]
    if not files:
        raise UserError(
            f"source {source.name!r} ({source.kind}): no files matching {' or '.join(patterns)} under {uri}"
        )
    return root, files


def _matches(rel: str, pattern: str) -> bool:
    """Glob on the path relative to the root; a pattern without `/` matches the file name anywhere."""
    if "/" not in pattern:
        return fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern)
    if pattern.startswith("**/") and _matches(rel, pattern[3:]):
        return True
    return fnmatch.fnmatchcase(rel, pattern)


# ------------------------------------------------------------------------------------------ reading


def read_unit(unit: InputUnit) -> Iterator[dict]:
    """Raw documents and quarantine entries of every file of the unit, in file order.

    Every file accounts for at least one record: one that cannot be opened, or that yields nothing
    (empty, or no record found in it), is one quarantine entry, so no input file vanishes from the
    counts."""
    reader = {"crawl": _read_warc, "warc": _read_warc, "code": _read_code, "jsonl": _read_jsonl,
              "parquet": _read_parquet, "arxiv": arxiv.read_arxiv,
              "gutenberg": gutenberg.read_gutenberg, "git": read_repository,
              "commoncrawl": commoncrawl.read_commoncrawl,
              "feed": feed.read_capture}[unit.source.kind]
    for uri in unit.files:
        yield from _read_file(unit, uri, reader)


def _read_file(unit: InputUnit, uri: str, reader) -> Iterator[dict]:
    rel = unit.relative(uri)
    yielded = False
    try:
        for record in reader(unit, uri):
            yielded = True
            yield record
    except OSError as exc:  # permissions, a file that vanished, a broken link, an I/O error
        yield _quarantine(unit, uri, rel, "file", f"unreadable file: {_describe(exc)}", where="file",
                          records_known=False, size=_file_size(uri))
        return
    if not yielded:
        size = _file_size(uri)
        yield _quarantine(unit, uri, rel, "file", "empty file" if size == 0 else "no records found",
                          _head(uri), where="file", records_known=False, size=size)
