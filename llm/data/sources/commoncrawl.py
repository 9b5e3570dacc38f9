"""Common Crawl as raw documents: a dump's WARC or WET files, or single WARC records named by CDX records.

A dump is named like `CC-MAIN-2025-33`; its listing `crawl-data/<dump>/warc.paths.gz` (or `wet.paths.gz`)
under the prefix (the `commoncrawl` bucket, or a local mirror) names its files, one input unit each.
Files are multi-gigabyte, so they are never downloaded whole: `storage.RangedFile` streams them in ranged
reads of `chunk_bytes`, and the WARC reader reads its gzip members from that stream, quarantining a damaged
member and resuming at the next one. WARC responses are HTML for the extract step; WET `conversion` records are
text Common Crawl already extracted, kept as text with the WARC record they came from (`WARC-Refers-To`).
A CDX record (as the index server answers) names one gzip member by (`filename`, `offset`, `length`): with
`cdx` set, exactly those bytes are read for each record, nothing else of the file.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from typing import Iterator

from llm import storage
from llm.config import SourceConfig, stable_hash
from llm.data.raw_records import MAX_RECORD_BYTES, InputUnit, _BadRecord, _describe, _doc, _quarantine, printable
from llm.data.warc_reader import _Archive, _drain, read_archive
from llm.errors import InputNotFound, UserError

_DUMP = re.compile(r"CC-MAIN-\d{4}-\d{2}")


# ------------------------------------------------------------------------------------------ planning


def listing_uri(source: SourceConfig) -> str:
    """The paths listing a source reads: its `paths` file, or its dump's listing under the prefix."""
    options = source.commoncrawl
    if options.paths:
        return storage.absolute(options.paths)
    if not options.dump:
        raise UserError(f"source {source.name!r} (commoncrawl): set `commoncrawl.dump` (e.g. CC-MAIN-2025-33), "
                        "`commoncrawl.paths` or `commoncrawl.cdx`")
    if not _DUMP.fullmatch(options.dump):
        raise UserError(f"source {source.name!r} (commoncrawl): `commoncrawl.dump` {options.dump!r} is not a "
                        "dump name like CC-MAIN-2025-33")
    return storage.join(_prefix(source), "crawl-data", options.dump, f"{options.kind}.paths.gz")


def _prefix(source: SourceConfig) -> str:
    return storage.absolute(source.commoncrawl.prefix).rstrip("/")


def _gunzipped(data: bytes, uri: str) -> bytes:
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{printable(uri)}: corrupt gzip listing: {_describe(exc)}") from None


def listed_files(source: SourceConfig) -> list[str]:
    """URIs of the files the listing names, in its order, at most `max_files`; a clear error naming the
    dump or listing when it does not exist or names nothing."""
    uri = listing_uri(source)
    what = f"dump {source.commoncrawl.dump!r}" if not source.commoncrawl.paths else "paths listing"
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise InputNotFound(f"source {source.name!r} (commoncrawl): {what} not found: no {printable(uri)}") from None
    lines = [line.strip() for line in _gunzipped(data, uri).decode("utf-8", "replace").splitlines()]
    files = [line if storage.is_s3(line) else storage.join(_prefix(source), line) for line in lines if line]
    if source.max_files is not None:
        files = files[: source.max_files]
    if not files:
        raise UserError(f"source {source.name!r} (commoncrawl): {what} {printable(uri)} lists no files")
    return files


def plan_commoncrawl(source: SourceConfig) -> list[InputUnit]:
    """One unit per listed file (or one for the CDX file). Common Crawl never rewrites a published file,
    so its path is its identity: planning a dump of 90,000 files costs one read of the listing."""
    if source.commoncrawl.cdx:
        cdx = storage.absolute(source.commoncrawl.cdx)
        if not storage.exists(cdx):
            raise InputNotFound(f"source {source.name!r} (commoncrawl): CDX file {printable(cdx)} does not exist")
        fingerprint = (("cdx", printable(cdx), *storage.stat_s3(cdx)) if storage.is_s3(cdx)
                       else ("cdx", printable(cdx), storage.size(cdx), _local_digest(cdx)))
        return [InputUnit(f"{source.name}-{stable_hash(list(fingerprint))[:12]}", source, (cdx,), _prefix(source),
                          (fingerprint,))]
    root = _prefix(source)
    units = []
    for uri in listed_files(source):
        fingerprint = ("commoncrawl", source.commoncrawl.kind, storage.relative(uri, root))
        units.append(InputUnit(f"{source.name}-{stable_hash(list(fingerprint))[:12]}", source, (uri,), root,
                               (fingerprint,)))
    return units


def _local_digest(path: str) -> str:
    from llm.data.input_files import _sha256_file

    return _sha256_file(path)


# ------------------------------------------------------------------------------------------ reading


class _WetArchive(_Archive):
    """A WET file: its `conversion` records (extracted text) are the documents; `warcinfo` is not."""

    document_type = "conversion"

    def document(self, record, key: object) -> dict:
        headers = record.rec_headers
        try:
            text = record.content_stream().read(MAX_RECORD_BYTES + 1)
            missing = _drain(record)
        except Exception as exc:  # warcio raises many types for a damaged body
            return _quarantine(self.unit, self.uri, self.rel, key, f"unreadable conversion record: {_describe(exc)}")
        if len(text) > MAX_RECORD_BYTES:
            return _quarantine(self.unit, self.uri, self.rel, key, f"record larger than {MAX_RECORD_BYTES} bytes")
        if missing:
            return _quarantine(self.unit, self.uri, self.rel, key,
                               f"truncated record: {missing} of {record.length} declared bytes missing", text)
        meta = {"path": printable(self.rel), "offset": key, "format": "wet",
                "warc_record_id": headers.get_header("WARC-Record-ID"),
                "refers_to": headers.get_header("WARC-Refers-To")}
        language = headers.get_header("WARC-Identified-Content-Language")
        if language:
            meta["languages"] = language.split(",")
        try:
            return _doc(self.unit, self.rel, key, url=headers.get_header("WARC-Target-URI"),
                        created=headers.get_header("WARC-Date"), meta=meta, payload=text, content_type="text",
                        charset="utf-8")  # WET text is written as UTF-8
        except _BadRecord as exc:
            return _quarantine(self.unit, self.uri, self.rel, key, str(exc))


def read_commoncrawl(unit: InputUnit, uri: str) -> Iterator[dict]:
    """The documents of one listed file, streamed by ranged reads; or, for a CDX file, of each record
    it names, read by its own byte range."""
    options = unit.source.commoncrawl
    if options.cdx:
        yield from _read_cdx(unit, uri)
        return
    size = storage.size(uri)
    archive_type = _WetArchive if options.kind == "wet" else None
    yield from read_archive(unit, uri, storage.RangedFile(uri, 0, size, options.chunk_bytes), size, archive_type)


def _read_cdx(unit: InputUnit, cdx_uri: str) -> Iterator[dict]:
    """One WARC record per CDX line, by its (`filename`, `offset`, `length`); a line that does not
    name a record, or a record that cannot be read, is one quarantine entry."""
    rel_cdx = unit.relative(cdx_uri)
    with storage.open_read(cdx_uri) as fh:
        for number, line in enumerate(io.TextIOWrapper(fh, encoding="utf-8", errors="replace"), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                name, offset, length = record["filename"], int(record["offset"]), int(record["length"])
                if offset < 0 or length <= 0:
                    raise ValueError("offset and length must be positive")
            except (ValueError, KeyError, TypeError) as exc:
                yield _quarantine(unit, cdx_uri, rel_cdx, number, f"not a CDX record with filename, offset and "
                                  f"length: {_describe(exc)}", line.encode("utf-8"), where="line")
                continue
            uri = name if storage.is_s3(name) else storage.join(unit.root, name)
            found = False
            try:
                for entry in read_archive(unit, uri, storage.RangedFile(uri, offset, offset + length,
                                                               unit.source.commoncrawl.chunk_bytes),
                                          offset + length, start=offset):
                    found = True
                    yield entry
            except OSError as exc:  # the file named is missing or unreadable: this record is lost, not the rest
                found = True
                yield _quarantine(unit, uri, unit.relative(uri), offset, f"unreadable CDX record: {_describe(exc)}")
            if not found:
                yield _quarantine(unit, uri, unit.relative(uri), offset,
                                  "no response record at the CDX record's offset", where="offset")
