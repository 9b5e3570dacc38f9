"""WARC and ARC files as raw documents: one per `response` record.

Gzip members are decompressed here and their records read by warcio; stored bytes that hold no
readable record become one quarantine entry, and reading resumes at the next record boundary.
"""

from __future__ import annotations

import io
import os
import re
import zlib
from typing import Iterator

from llm import storage
from llm.data import schema
from llm.data.raw_records import (
    _RESYNC_CHUNK,
    MAX_RECORD_BYTES,
    InputUnit,
    _BadRecord,
    _describe,
    _doc,
    _head,
    _quarantine,
    is_quarantine,
    printable,
)

HTML_TYPES = ("text/html", "application/xhtml+xml")


def _read_warc(unit: InputUnit, uri: str) -> Iterator[dict]:
    """`response` records of a WARC/ARC file (gzip or plain); other record types are not documents.

    Stored bytes that hold no readable record become one quarantine entry, and reading resumes at the
    next record boundary found after them (the next gzip member header, or the next `WARC/1.x` line in
    a plain file). A plain ARC file has no reliable boundary marker, so reading stops there. A file
    that holds intact records but no response is one entry saying what it held.
    """
    with storage.local_copy(uri) as path, open(path, "rb") as fh:
        yield from read_archive(unit, uri, fh, os.fstat(fh.fileno()).st_size)


def read_archive(unit: InputUnit, uri: str, fh, size: int, archive_type: type | None = None,
                 start: int = 0) -> Iterator[dict]:
    """The records of an open WARC/ARC file `fh` (any seekable binary file: a local file, or ranged
    reads of an S3 object) from offset `start` up to `size`, as `_read_warc` describes; `archive_type`
    (an `_Archive` subclass) reads another record type as the documents."""
    rel = unit.relative(uri)
    # ARC records get fresh random WARC-Record-IDs on conversion: useless as provenance, and they
    # would make meta differ between reruns.
    is_arc = bool(re.search(r"\.arc(\.gz)?$", uri))
    if size <= start:
        return  # `_read_file` reports the empty file
    archive = (archive_type or _Archive)(unit, uri, rel, fh, size, is_arc)
    fh.seek(start)
    yielded = False
    for entry in archive.read_members(start) if fh.read(2) == b"\x1f\x8b" else archive.read_plain(start):
        yielded = True
        yield entry
    if not yielded and archive.other_types:
        # A valid archive, but not of pages: say what it held rather than "no records found".
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(archive.other_types.items()))
        yield _quarantine(unit, uri, rel, "file", f"no {archive.document_type} records (holds {kinds})", _head(uri),
                          where="file", records_known=False, size=size)


class _Damaged(Exception):
    """Stored bytes that are not a readable gzip member."""


class _Archive:
    """One open WARC/ARC file: its records as documents, and an entry for every stretch that is not."""

    document_type = "response"  # the WARC-Type whose records are documents

    def __init__(self, unit: InputUnit, uri: str, rel: str, fh, size: int, is_arc: bool):
        self.unit, self.uri, self.rel, self.fh, self.size, self.is_arc = unit, uri, rel, fh, size, is_arc
        self.other_types: dict[str, int] = {}  # intact records that are not documents, by type

    # ---------------------------------------------------------------- gzip: one member per record

    def read_members(self, pos: int = 0) -> Iterator[dict]:
        """Records of a gzip file, member by member from offset `pos`. Members are decompressed here
        rather than by warcio, which ends the file silently at a member that fails to decompress."""
        while pos < self.size:
            try:
                data, end = self._member(pos)
            except _Damaged as exc:
                if self._only_padding(pos):
                    return
                nxt = _next_boundary(self.fh, pos + 1, self.size, True, self.is_arc)
                yield self.damaged(pos, nxt or self.size, str(exc))
                if nxt is None:
                    return
                pos = nxt
                continue
            yield from self._member_records(data, pos, end)
            pos = end

    def _member(self, pos: int) -> tuple[bytes, int]:
        """(decompressed bytes, end offset) of the gzip member at `pos`; raises `_Damaged`."""
        fh = self.fh
        fh.seek(pos)
        decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
        parts: list[bytes] = []
        total = 0
        while not decomp.eof:
            chunk = decomp.unconsumed_tail or fh.read(_RESYNC_CHUNK)
            if not chunk:
                raise _Damaged("truncated gzip member")
            try:
                part = decomp.decompress(chunk, _RESYNC_CHUNK)
            except zlib.error as exc:
                raise _Damaged(f"corrupt gzip member: {exc}") from None
            total += len(part)
            if total > MAX_RECORD_BYTES:
                raise _Damaged(f"gzip member decompresses to more than {MAX_RECORD_BYTES} bytes")
            parts.append(part)
        return b"".join(parts), fh.tell() - len(decomp.unused_data)

    def _member_records(self, data: bytes, pos: int, end: int) -> Iterator[dict]:
        """Documents of the records in one member (one, unless the file was gzipped whole)."""
        records = self._iterator(io.BytesIO(data))
        inner = 0
        try:
            for record in records:
                inner = records.offset
                key = pos if inner == 0 else f"{pos}+{inner}"
                head = data[inner: inner + _header_span(record)]
                yield from self._record(record, key, head, lambda: (data[inner:], end - pos))
        except Exception as exc:  # warcio raises many types for bad input (and some AttributeErrors)
            inner = max(inner, records.offset)
            yield _quarantine(self.unit, self.uri, self.rel, pos if inner == 0 else f"{pos}+{inner}",
                              f"unreadable record: {_describe(exc)}", data[inner:],
                              records_known=inner == 0, size=end - pos)

    # ---------------------------------------------------------------------------- plain files

    def read_plain(self, start: int = 0) -> Iterator[dict]:
        """Records of an uncompressed file from offset `start`, read by warcio, resuming after a
        damaged record."""
        pos: int | None = start
        while pos is not None and pos < self.size:
            self.fh.seek(pos)
            records = self._iterator(self.fh)
            last_start = pos
            try:
                for record in records:
                    last_start = records.offset
                    head = _read_at(self.fh, records.offset, _header_span(record))
                    yield from self._record(record, records.offset, head, self._plain_extent(records))
                if self._only_padding(records.offset):
                    return
                failed_at, error = records.offset, "unreadable bytes after the last record"
            except Exception as exc:  # warcio raises many types for bad input (and some AttributeErrors)
                failed_at, error = max(records.offset, last_start, pos), f"unreadable record: {_describe(exc)}"
                if self._only_padding(failed_at):
                    return
            pos = _next_boundary(self.fh, failed_at + 1, self.size, False, self.is_arc)
            yield self.damaged(failed_at, pos or self.size, error)

    def _plain_extent(self, records):
        """A function giving the current record's stored bytes and size (warcio knows its length once
        the record has been read through)."""
        def extent() -> tuple[bytes, int]:
            offset, length = records.get_record_offset(), records.get_record_length()
            return _read_at(self.fh, offset, min(length, schema.QUARANTINE_RAW_LIMIT)), max(1, length)
        return extent

    # --------------------------------------------------------------------------------- shared

    def _iterator(self, stream):
        """warcio's record iterator over `stream`. Only a file named as an ARC file may hold ARC
        records: an ARC header is any line of five fields, so elsewhere a line of damaged bytes or
        text would pass for one, with a length read from the garbage."""
        from warcio.archiveiterator import ArchiveIterator, WARCIterator

        return (ArchiveIterator if self.is_arc else WARCIterator)(stream, arc2warc=True)

    def _record(self, record, key: object, head: bytes, extent) -> Iterator[dict]:
        """The document for a response record, or its quarantine entry; nothing for other record
        types unless they are cut short (a cut header can hide what type the record was). `head` is
        the record's stored header block; `extent()` gives its stored bytes and size."""
        if not self.is_arc and _header_cut(head, _header_span(record)):
            # warcio takes the end of the file for the end of the header block
            raw, size = extent()
            yield _quarantine(self.unit, self.uri, self.rel, key, "truncated record: the header breaks off",
                              raw, size=size)
            return
        if record.rec_type != self.document_type:
            missing = _drain(record)
            if missing:
                raw, size = extent()
                yield _quarantine(self.unit, self.uri, self.rel, key,
                                  f"truncated record: {missing} of {record.length} declared bytes missing",
                                  raw, size=size)
            else:
                kind = str(record.rec_type)
                self.other_types[kind] = self.other_types.get(kind, 0) + 1
            return
        doc = self.document(record, key)
        if is_quarantine(doc):
            raw, size = extent()
            doc["raw"] = doc["raw"] or raw[: schema.QUARANTINE_RAW_LIMIT]
            doc["size"] = size
        yield doc

    def document(self, record, key: object) -> dict:
        """The raw document (or quarantine entry) for one record of `document_type`."""
        return _warc_document(self.unit, self.uri, self.rel, record, key, self.is_arc)

    def damaged(self, start: int, end: int, error: str) -> dict:
        """The entry for stored bytes [start, end) that hold no readable record: one record where a
        record boundary follows them; a stretch running to the end of the file cannot be split, so
        its count (1) is a lower bound."""
        raw = _read_at(self.fh, start, min(end - start, schema.QUARANTINE_RAW_LIMIT))
        return _quarantine(self.unit, self.uri, self.rel, start, error, raw, records_known=end < self.size,
                           size=end - start)

    def _only_padding(self, pos: int) -> bool:
        """True when nothing but whitespace or NUL padding is left from `pos` on."""
        if self.size - pos > schema.QUARANTINE_RAW_LIMIT:
            return False
        return not _read_at(self.fh, pos, self.size - pos).strip(b"\x00 \t\r\n")


def _warc_document(unit: InputUnit, uri: str, rel: str, record, offset: object, is_arc: bool) -> dict:
    """A raw document for one response record, or a quarantine entry if the record is damaged."""
    http = record.http_headers
    status = http.get_statuscode() if http is not None else None
    if http is None or not status or not (status.isascii() and status.isdigit()):  # not "²", which int() refuses
        return _quarantine(unit, uri, rel, offset, "response record without an HTTP status line")
    try:
        # bounded: a small gzip Content-Encoding can decode to gigabytes
        payload = record.content_stream().read(MAX_RECORD_BYTES + 1)
        missing = _drain(record)
    except Exception as exc:  # broken chunked encoding or Content-Encoding
        return _quarantine(unit, uri, rel, offset, f"unreadable response body: {_describe(exc)}")
    if len(payload) > MAX_RECORD_BYTES:
        return _quarantine(unit, uri, rel, offset, f"response body larger than {MAX_RECORD_BYTES} bytes")
    if missing:
        return _quarantine(unit, uri, rel, offset,
                           f"truncated record: {missing} of {record.length} declared bytes missing", payload)
    content_type = http.get_header("Content-Type") or ""
    mime = content_type.split(";")[0].strip().lower()
    if not mime and payload[:512].lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        mime = "text/html"  # no declared type, but unmistakably a page
    headers = record.rec_headers
    meta = {"path": printable(rel), "offset": offset, "status": int(status)}
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
    try:
        return _doc(unit, rel, offset, url=headers.get_header("WARC-Target-URI"),
                    created=headers.get_header("WARC-Date"), meta=meta, payload=payload,
                    content_type=kind, charset=_charset(content_type))
    except _BadRecord as exc:
        return _quarantine(unit, uri, rel, offset, str(exc))


def _header_span(record) -> int:
    """Stored bytes that hold the record's WARC header block, blank line included: warcio counts the
    block in characters, and a UTF-8 character is at most 4 bytes (0 when not known)."""
    return min(4 * (getattr(record.rec_headers, "total_len", 0) or 0), schema.QUARANTINE_RAW_LIMIT)


_BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")


def _header_cut(head: bytes, span: int) -> bool:
    """True when the header block read as `head` (`span` bytes wanted) ends at the end of the stored
    bytes instead of at a blank line: the record was cut inside its header."""
    return bool(span) and len(head) < span and not _BLANK_LINE.search(head)


def _drain(record) -> int:
    """Read what the content stream left of the record; returns how many declared bytes never came."""
    stream = record.raw_stream
    while stream.read(1 << 16):
        pass
    return max(0, getattr(stream, "limit", 0))


def _read_at(fh, offset: int, length: int) -> bytes:
    """`length` bytes from `offset`; the file position is restored, as the archive iterator reads on
    from it."""
    here = fh.tell()
    try:
        fh.seek(offset)
        return fh.read(length)
    finally:
        fh.seek(here)


def _next_boundary(fh, start: int, size: int, gzipped: bool, is_arc: bool) -> int | None:
    """Offset of the next record start at or after `start`, or None. In a gzip file that is the next
    well-formed member header: three marker bytes and a flag byte without reserved bits (the marker
    alone turns up inside compressed data about once in 16 MB). A member damaged past its header is
    still a record of its own."""
    if gzipped:
        marker = b"\x1f\x8b\x08"
    elif is_arc:
        return None
    else:
        marker = b"\nWARC/1."
    pos = start
    while pos < size:
        chunk = _read_at(fh, pos, _RESYNC_CHUNK + len(marker) + 1)
        hit = chunk.find(marker)
        while 0 <= hit < _RESYNC_CHUNK:
            if not gzipped:
                return pos + hit + 1
            flags = chunk[hit + 3: hit + 4]
            if flags and not flags[0] & 0xE0:
                return pos + hit
            hit = chunk.find(marker, hit + 1)
        pos += _RESYNC_CHUNK
    return None


def _charset(content_type: str | None) -> str | None:
    match = re.search(r"charset\s*=\s*[\"']?([\w.:\-]+)", content_type or "", re.I)
    return match.group(1).lower() if match else None

