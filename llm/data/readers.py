"""Input planning and readers: sources become input units, units become raw documents.

`plan_inputs` cuts every configured source into units (one per WARC/JSONL/Parquet file, a group of
files for code), deterministically. `read_unit` yields, for one unit, raw documents (`RAW_SCHEMA`
field names) and quarantine entries (`QUARANTINE_SCHEMA` field names) for input that cannot be read;
`is_quarantine` tells them apart. Ids come from the source name, the file's path relative to the
unit's root and the record's offset/line/row, so they are the same on every rerun and machine.
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import os
import re
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from llm import storage
from llm.config import SourceConfig
from llm.data import schema

HTML_TYPES = ("text/html", "application/xhtml+xml")
DEFAULT_PATTERNS = {
    "crawl": ("*.warc.gz",),
    "warc": ("*.warc.gz", "*.warc", "*.arc", "*.arc.gz"),
    "jsonl": ("*.jsonl", "*.jsonl.gz"),
    "parquet": ("*.parquet",),
    "code": ("*.py",),
}
# Parts of the standard library left out of the default code source: `test`/`tests` are the test
# suite (a large share of all stdlib lines, with deliberately broken files: bad encodings, syntax
# errors), `idlelib` is a GUI application, `lib2to3` carries Python 2 grammar fixtures, and
# `site-packages` holds third-party code, not the standard library.
STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3"})
_CODING_COOKIE = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")
_RESYNC_CHUNK = 1 << 20


@dataclass(frozen=True)
class InputUnit:
    """One shard of the ingest pass: files of one source, named relative to `root`. `shard` is named by
    the files' content (`input_files.group_name`); `fingerprint` is what its output's key is made of."""

    shard: str
    source: SourceConfig
    files: tuple[str, ...]
    root: str
    fingerprint: tuple = ()

    def relative(self, uri: str) -> str:
        """The file's path inside `root`: what ids are built from."""
        rel = uri[len(self.root):] if uri.startswith(self.root) else uri
        return rel.lstrip("/") or uri.rsplit("/", 1)[-1]


def is_quarantine(record: dict) -> bool:
    """True for a quarantine entry from `read_unit`, False for a raw document."""
    return "error" in record


# ------------------------------------------------------------------------------------------ planning


def plan_inputs(sources: list[SourceConfig], crawl_uri: str, digest_cache: str | None = None) -> list[InputUnit]:
    """Units for every source, in source order then file path; each named by the files it holds, so
    adding or removing a file changes only the unit it falls in. `digest_cache` (a JSON file) keeps
    local files' digests between runs."""
    from llm.data.input_files import DigestCache, content_groups, describe, group_name

    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"source names must be unique (they prefix shard names and ids): {duplicates}")
    cache = DigestCache(digest_cache)
    units: list[InputUnit] = []
    for source in sources:
        root, files = _source_files(source, crawl_uri)
        per_unit = source.files_per_shard if source.kind == "code" else 1
        for group in content_groups(describe(files, root, cache), per_unit):
            units.append(InputUnit(group_name(source.name, group), source, tuple(f.uri for f in group), root,
                                   tuple(tuple(f.fingerprint()) for f in group)))
    cache.save()
    return units


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
                raise ValueError(f"source {source.name!r} (crawl): the crawl at {uri} wrote no WARC file")
            return storage.absolute(uri).rstrip("/"), listed
    elif source.kind == "code" and source.uri is None:
        uri = sysconfig.get_paths()["stdlib"]
    elif source.uri is None:
        raise ValueError(f"source {source.name!r} ({source.kind}): `uri` is required")
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
        raise FileNotFoundError(f"source {source.name!r} ({source.kind}): {uri} does not exist")
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
        raise ValueError(
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
    """Raw documents and quarantine entries of every file of the unit, in file order."""
    reader = {"crawl": _read_warc, "warc": _read_warc, "code": _read_code, "jsonl": _read_jsonl,
              "parquet": _read_parquet}[unit.source.kind]
    for uri in unit.files:
        yield from reader(unit, uri)


def _doc(unit: InputUnit, rel: str, pos: object, *, url: str | None, created: str | None, meta: dict,
         payload: bytes, content_type: str, charset: str | None) -> dict:
    return {
        "id": schema.doc_id(unit.source.name, rel, pos),
        "source": unit.source.name,
        "url": url,
        "created": created,
        "meta": json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str),
        "payload": payload,
        "content_type": content_type,
        "charset": charset,
    }


def _quarantine(unit: InputUnit, uri: str, rel: str, pos: object, error: str, raw: bytes = b"",
                where: str = "offset") -> dict:
    return {
        "id": schema.doc_id(unit.source.name, rel, pos),
        "source": unit.source.name,
        "location": f"{uri}#{where}={pos}",
        "stage": "ingest",
        "error": error,
        "raw": raw[: schema.QUARANTINE_RAW_LIMIT],
    }


def _head(uri: str) -> bytes:
    """The first bytes of a file, for a quarantine entry about the whole file."""
    try:
        with storage.open_read(uri) as fh:
            return fh.read(schema.QUARANTINE_RAW_LIMIT)
    except OSError:
        return b""


# --------------------------------------------------------------------------------------------- WARC


def _read_warc(unit: InputUnit, uri: str) -> Iterator[dict]:
    """`response` records of a WARC/ARC file (gzip or plain); other record types are not documents.

    A record that cannot be parsed becomes a quarantine entry, and reading resumes at the next record
    boundary found after it (the next gzip member, or the next `WARC/1.x` line in a plain file). A
    plain ARC file has no reliable boundary marker, so reading stops there.
    """
    from warcio.archiveiterator import ArchiveIterator

    rel = unit.relative(uri)
    # ARC records get fresh random WARC-Record-IDs on conversion: useless as provenance, and they
    # would make meta differ between reruns.
    is_arc = bool(re.search(r"\.arc(\.gz)?$", uri))
    with storage.local_copy(uri) as path, open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            yield _quarantine(unit, uri, rel, 0, "empty file")
            return
        gzipped = fh.read(2) == b"\x1f\x8b"
        pos: int | None = 0
        while pos is not None:
            fh.seek(pos)
            records = ArchiveIterator(fh, arc2warc=True)
            last_start = pos
            try:
                for record in records:
                    last_start = records.offset
                    if record.rec_type != "response":
                        continue
                    doc = _warc_document(unit, uri, rel, record, records.offset, is_arc)
                    if is_quarantine(doc) and not doc["raw"]:
                        doc["raw"] = _stored_record(fh, records.offset, size, gzipped, is_arc)
                    yield doc
                pos = None
            except Exception as exc:  # warcio raises many types for bad input (and some AttributeErrors)
                failed_at = max(records.offset, last_start, pos)
                raw = _stored_record(fh, failed_at, size, gzipped, is_arc)
                yield _quarantine(unit, uri, rel, failed_at, f"unreadable record: {_describe(exc)}", raw)
                pos = _next_boundary(fh, failed_at + 1, size, gzipped, is_arc)


def _warc_document(unit: InputUnit, uri: str, rel: str, record, offset: int, is_arc: bool) -> dict:
    """A raw document for one response record, or a quarantine entry if the record is damaged."""
    http = record.http_headers
    status = http.get_statuscode() if http is not None else None
    if http is None or not status or not status.isdigit():
        return _quarantine(unit, uri, rel, offset, "response record without an HTTP status line")
    try:
        payload = record.content_stream().read()
        missing = _drain(record)
    except Exception as exc:  # broken chunked encoding or Content-Encoding
        return _quarantine(unit, uri, rel, offset, f"unreadable response body: {_describe(exc)}")
    if missing:
        return _quarantine(unit, uri, rel, offset,
                           f"truncated record: {missing} of {record.length} declared bytes missing", payload)
    content_type = http.get_header("Content-Type") or ""
    mime = content_type.split(";")[0].strip().lower()
    if not mime and payload[:512].lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        mime = "text/html"  # no declared type, but unmistakably a page
    headers = record.rec_headers
    meta = {"path": rel, "offset": offset, "status": int(status)}
    if not is_arc and headers.get_header("WARC-Record-ID"):
        meta["warc_record_id"] = headers.get_header("WARC-Record-ID")
    if mime in HTML_TYPES:
        kind = "html"
    else:
        # Kept as a document so the extraction step can drop it with its type as the reason; the
        # bytes are not carried (fonts, images, scripts), only their length.
        kind = f"other:{mime or 'unknown'}"
        meta["length"] = len(payload)
        payload = b""
    return _doc(unit, rel, offset, url=headers.get_header("WARC-Target-URI"),
                created=headers.get_header("WARC-Date"), meta=meta, payload=payload,
                content_type=kind, charset=_charset(content_type))


def _drain(record) -> int:
    """Read what the content stream left of the record; returns how many declared bytes never came."""
    stream = record.raw_stream
    while stream.read(1 << 16):
        pass
    return max(0, getattr(stream, "limit", 0))


def _stored_record(fh, offset: int, size: int, gzipped: bool, is_arc: bool) -> bytes:
    """The record's bytes as stored (up to the next record boundary or the quarantine limit); the
    file position is restored, as the archive iterator reads on from it."""
    here = fh.tell()
    try:
        end = _next_boundary(fh, offset + 1, min(size, offset + schema.QUARANTINE_RAW_LIMIT), gzipped, is_arc)
        fh.seek(offset)
        return fh.read(min((end or size) - offset, schema.QUARANTINE_RAW_LIMIT))
    finally:
        fh.seek(here)


def _next_boundary(fh, start: int, size: int, gzipped: bool, is_arc: bool) -> int | None:
    """Offset of the next record start at or after `start`, or None."""
    if gzipped:
        marker = b"\x1f\x8b\x08"
    elif is_arc:
        return None
    else:
        marker = b"\nWARC/1."
    pos = start
    while pos < size:
        fh.seek(pos)
        chunk = fh.read(_RESYNC_CHUNK + len(marker))
        hit = chunk.find(marker)
        if hit >= 0:
            return pos + hit + (1 if marker.startswith(b"\n") else 0)
        pos += _RESYNC_CHUNK
    return None


def _charset(content_type: str | None) -> str | None:
    match = re.search(r"charset\s*=\s*[\"']?([\w.:\-]+)", content_type or "", re.I)
    return match.group(1).lower() if match else None


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------- code


def _read_code(unit: InputUnit, uri: str) -> Iterator[dict]:
    """A Python source file as one text document; no date, as mtimes would make reruns differ."""
    rel = unit.relative(uri)
    try:
        payload = storage.read_bytes(uri)
    except OSError as exc:
        yield _quarantine(unit, uri, rel, 0, f"unreadable file: {_describe(exc)}")
        return
    url = uri if storage.is_s3(uri) else Path(uri).as_uri()
    yield _doc(unit, rel, 0, url=url, created=None, meta={"path": rel, "language": "python"},
               payload=payload, content_type="text", charset=coding_cookie(payload))


def coding_cookie(source: bytes) -> str | None:
    """The PEP 263 encoding declared in the first two lines (or "utf-8" for a UTF-8 BOM), else None."""
    if source.startswith(b"\xef\xbb\xbf"):
        return "utf-8"
    lines = source.split(b"\n", 2)[:2]
    for i, line in enumerate(lines):
        match = _CODING_COOKIE.match(line)
        if match:
            return match.group(1).decode("ascii").lower()
        # PEP 263: the second line counts only if the first is a comment or blank.
        if i == 0 and line.strip() and not line.lstrip().startswith(b"#"):
            break
    return None


# -------------------------------------------------------------------------------------------- JSONL


def _read_jsonl(unit: InputUnit, uri: str) -> Iterator[dict]:
    """One document per line; bad lines are quarantined with their line number."""
    rel = unit.relative(uri)
    # A local copy (the file itself when local): S3 response bodies do not iterate by line.
    with storage.local_copy(uri) as path, open(path, "rb") as fh:
        stream = gzip.GzipFile(fileobj=fh) if uri.endswith(".gz") else fh
        line_no = 0
        seen_bytes = False
        try:
            for line_no, line in enumerate(stream, start=1):
                seen_bytes = True
                if not line.strip():
                    continue
                yield _jsonl_record(unit, uri, rel, line_no, line)
        except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt gzip
            yield _quarantine(unit, uri, rel, line_no + 1, f"unreadable file: {_describe(exc)}", where="line")
            return
    if not seen_bytes:
        yield _quarantine(unit, uri, rel, 0, "empty file", where="line")


def _jsonl_record(unit: InputUnit, uri: str, rel: str, line_no: int, line: bytes) -> dict:
    src = unit.source
    try:
        obj = json.loads(line)
    except ValueError as exc:  # bad JSON or bad UTF-8
        return _quarantine(unit, uri, rel, line_no, f"malformed JSON: {exc}", line, where="line")
    if not isinstance(obj, dict):
        return _quarantine(unit, uri, rel, line_no, f"line is a JSON {type(obj).__name__}, not an object",
                           line, where="line")
    text = obj.get(src.text_field)
    if not isinstance(text, str):
        problem = "missing" if text is None else f"a {type(text).__name__}, not a string"
        return _quarantine(unit, uri, rel, line_no, f"text field {src.text_field!r} is {problem}", line,
                           where="line")
    meta: dict = {"path": rel, "line": line_no}
    if src.id_field is not None and src.id_field in obj:
        meta[src.id_field] = obj[src.id_field]
    url = obj.get("url")
    return _doc(unit, rel, line_no, url=url if isinstance(url, str) else None, created=None, meta=meta,
                payload=text.encode("utf-8", "surrogatepass"), content_type="text", charset="utf-8")


# ------------------------------------------------------------------------------------------ Parquet


def _read_parquet(unit: InputUnit, uri: str) -> Iterator[dict]:
    """One document per row of `text_field`; an unreadable file is one quarantine entry."""
    src = unit.source
    rel = unit.relative(uri)
    row = 0
    try:
        with storage.local_copy(uri) as path:
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            if src.text_field not in names:
                yield _quarantine(unit, uri, rel, 0, f"no column {src.text_field!r} (columns: {names})",
                                  _head(uri), where="row")
                return
            columns = [src.text_field] + [c for c in (src.id_field, "url") if c and c in names and c != src.text_field]
            for batch in pf.iter_batches(batch_size=1024, columns=columns):
                cols = batch.to_pydict()
                for i, text in enumerate(cols[src.text_field]):
                    yield _parquet_record(unit, uri, rel, row, text, {c: cols[c][i] for c in columns[1:]})
                    row += 1
    except Exception as exc:  # not Parquet, truncated, or a corrupt page
        yield _quarantine(unit, uri, rel, row, f"unreadable Parquet file: {_describe(exc)}", _head(uri),
                          where="row")


def _parquet_record(unit: InputUnit, uri: str, rel: str, row: int, text, extra: dict) -> dict:
    src = unit.source
    if isinstance(text, bytes):
        return _doc(unit, rel, row, url=None, created=None, meta={"path": rel, "row": row}, payload=text,
                    content_type="text", charset=None)
    if not isinstance(text, str):
        return _quarantine(unit, uri, rel, row, f"text field {src.text_field!r} is null or not a string",
                           where="row")
    meta: dict = {"path": rel, "row": row}
    if src.id_field and src.id_field in extra:
        meta[src.id_field] = extra[src.id_field]
    url = extra.get("url")
    return _doc(unit, rel, row, url=url if isinstance(url, str) else None, created=None, meta=meta,
                payload=text.encode("utf-8", "surrogatepass"), content_type="text", charset="utf-8")
