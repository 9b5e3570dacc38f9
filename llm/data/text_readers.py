"""Code, JSONL and Parquet files as raw documents: a Python source file, a JSONL line or a Parquet row
is one document; a line or row that cannot be stored is one quarantine entry, located by its number.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from llm import storage
from llm.data import schema
from llm.data.raw_records import (
    _RESYNC_CHUNK,
    MAX_RECORD_BYTES,
    InputUnit,
    _BadRecord,
    _describe,
    _doc,
    _file_size,
    _head,
    _quarantine,
    printable,
)

_CODING_COOKIE = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")


# --------------------------------------------------------------------------------------------- code


def _read_code(unit: InputUnit, uri: str) -> Iterator[dict]:
    """A Python source file as one text document; no date, as mtimes would make reruns differ."""
    rel = unit.relative(uri)
    try:
        payload = storage.read_bytes(uri)
    except OSError as exc:  # a file is one record, readable or not
        yield _quarantine(unit, uri, rel, 0, f"unreadable file: {_describe(exc)}", size=_file_size(uri))
        return
    # as_uri percent-encodes the bytes of a file name that is not UTF-8; meta shows them escaped.
    url = uri if storage.is_s3(uri) else Path(uri).as_uri()
    yield _doc(unit, rel, 0, url=url, created=None, meta={"path": printable(rel), "language": "python"},
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
    """One document per line; bad lines are quarantined with their line number. Where a gzip stream
    breaks off, the lines before it count and the rest is one entry of unknown count."""
    rel = unit.relative(uri)
    # A local copy (the file itself when local): S3 response bodies do not iterate by line.
    with storage.local_copy(uri) as path, open(path, "rb") as fh:
        lines = _Lines(gzip.GzipFile(fileobj=fh) if uri.endswith(".gz") else fh)
        try:
            for line in lines:
                yield from _jsonl_line(unit, uri, rel, *line)
        except (OSError, EOFError, zlib.error) as exc:  # truncated or corrupt gzip
            for line in lines.ended():
                yield from _jsonl_line(unit, uri, rel, *line)
            yield _quarantine(unit, uri, rel, lines.line_no + 1, f"unreadable file: {_describe(exc)}",
                              lines.partial(), where="line", records_known=False,
                              size=os.fstat(fh.fileno()).st_size)


def _utf8_text(text: str) -> bytes:
    """`text` as UTF-8. A lone surrogate (a `\\ud800` escape in JSON) in a text is one unreadable
    character, not a bad record: it becomes U+FFFD, as undecodable bytes do when a payload is decoded."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def _jsonl_line(unit: InputUnit, uri: str, rel: str, line_no: int, line: bytes, size: int) -> Iterator[dict]:
    if size > MAX_RECORD_BYTES:
        yield _quarantine(unit, uri, rel, line_no, f"line longer than {MAX_RECORD_BYTES} bytes", line,
                          where="line", size=size)
    elif line.strip():
        yield _jsonl_record(unit, uri, rel, line_no, line)


_LINE_END = re.compile(rb"\r\n|\r|\n")


class _Lines:
    """(line number, bytes, size) of each line of a binary stream, its end included. A line ends at
    `\\n`, `\\r\\n` or a lone `\\r` (a JSON text cannot hold a raw CR, so a file written with CR line ends
    still splits into its records). A line longer than MAX_RECORD_BYTES is never held whole: it comes
    back cut to QUARANTINE_RAW_LIMIT bytes, with its full size."""

    def __init__(self, stream):
        self.stream = stream
        self.line_no = 0
        self._parts: list[bytes] = []
        self._size = 0
        self._cr_pending = False  # the last chunk ended in `\r`: a `\n` may follow in the next one

    def __iter__(self) -> Iterator[tuple[int, bytes, int]]:
        # read1: what a damaged gzip stream gives before it breaks off comes back before the error
        read = getattr(self.stream, "read1", self.stream.read)
        while chunk := read(_RESYNC_CHUNK):
            yield from self._feed(chunk)
        if self._size:
            yield self._take()

    def ended(self) -> list[tuple[int, bytes, int]]:
        """After the stream broke off: the line whose `\\r` end was the last byte read (no `\\n` can
        follow it now)."""
        if not self._cr_pending:
            return []
        self._cr_pending = False
        return [self._take()]

    def partial(self) -> bytes:
        """The bytes read of a line not yet ended."""
        return b"".join(self._parts)

    def _feed(self, chunk: bytes) -> Iterator[tuple[int, bytes, int]]:
        if self._cr_pending:
            self._cr_pending = False
            if chunk.startswith(b"\n"):
                self._add(b"\n")
                chunk = chunk[1:]
            yield self._take()
        start = 0
        if b"\r" not in chunk:  # the usual case: no CR, so every line ends at a `\n` (find is C speed)
            while (end := chunk.find(b"\n", start)) >= 0:
                self._add(chunk[start:end + 1])
                start = end + 1
                yield self._take()
            self._add(chunk[start:])
            return
        for match in _LINE_END.finditer(chunk):
            if match.end() == len(chunk) and match.group() == b"\r":
                self._cr_pending = True
                break
            self._add(chunk[start:match.end()])
            start = match.end()
            yield self._take()
        self._add(chunk[start:])

    def _add(self, piece: bytes) -> None:
        self._size += len(piece)
        if self._size <= MAX_RECORD_BYTES:
            self._parts.append(piece)
        elif self._size - len(piece) <= MAX_RECORD_BYTES:  # just grew too long: keep only its head
            self._parts = [(b"".join(self._parts) + piece)[: schema.QUARANTINE_RAW_LIMIT]]

    def _take(self) -> tuple[int, bytes, int]:
        self.line_no += 1
        line = (self.line_no, b"".join(self._parts), self._size)
        self._parts, self._size = [], 0
        return line


def _jsonl_record(unit: InputUnit, uri: str, rel: str, line_no: int, line: bytes) -> dict:
    src = unit.source
    try:
        obj = json.loads(line)
    except ValueError as exc:  # bad JSON or bad UTF-8
        return _quarantine(unit, uri, rel, line_no, f"malformed JSON: {exc}", line, where="line")
    except RecursionError:  # arrays or objects nested thousands deep
        return _quarantine(unit, uri, rel, line_no, "malformed JSON: nested too deeply", line, where="line")
    if not isinstance(obj, dict):
        return _quarantine(unit, uri, rel, line_no, f"line is a JSON {type(obj).__name__}, not an object",
                           line, where="line")
    text = obj.get(src.text_field)
    if not isinstance(text, str):
        problem = "missing" if text is None else f"a {type(text).__name__}, not a string"
        return _quarantine(unit, uri, rel, line_no, f"text field {src.text_field!r} is {problem}", line,
                           where="line")
    meta: dict = {"path": printable(rel), "line": line_no}
    if src.id_field is not None and src.id_field in obj:
        meta[src.id_field] = obj[src.id_field]
    url = obj.get("url")
    try:
        return _doc(unit, rel, line_no, url=url if isinstance(url, str) else None, created=None, meta=meta,
                    payload=_utf8_text(text), content_type="text", charset="utf-8")
    except _BadRecord as exc:
        return _quarantine(unit, uri, rel, line_no, str(exc), line, where="line")


# ------------------------------------------------------------------------------------------ Parquet


def _read_parquet(unit: InputUnit, uri: str) -> Iterator[dict]:
    """One document per row of `text_field`. A file whose metadata cannot be read is one entry of
    unknown count; otherwise the metadata's row counts say how many records an entry stands for (a
    missing text column, a row group that cannot be decoded)."""
    src = unit.source
    rel = unit.relative(uri)
    with storage.local_copy(uri) as path:
        size = os.path.getsize(path)
        try:
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
        except Exception as exc:  # not Parquet, truncated, damaged footer
            yield _quarantine(unit, uri, rel, 0, f"unreadable Parquet file: {_describe(exc)}", _head(uri),
                              where="row", records_known=False, size=size)
            return
        rows = pf.metadata.num_rows
        if src.text_field not in names:
            yield _quarantine(unit, uri, rel, 0, f"no column {src.text_field!r} (columns: {names})", _head(uri),
                              where="row", records=max(1, rows), records_known=rows > 0, size=size)
            return
        columns = list(dict.fromkeys(c for c in (src.text_field, src.id_field, "url") if c and c in names))
        first = 0
        for group in range(pf.metadata.num_row_groups):
            yield from _parquet_group(unit, uri, rel, pf, group, first, columns)
            first += pf.metadata.row_group(group).num_rows


def _parquet_group(unit: InputUnit, uri: str, rel: str, pf, group: int, first: int, columns: list[str]):
    """The rows of one row group; where its pages cannot be decoded, the rows not read are one entry,
    and the next row group is read as usual."""
    meta = pf.metadata.row_group(group)
    row = first
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=columns, row_groups=[group]):
            cols = {name: _column_values(batch.column(name)) for name in columns}
            for i in range(batch.num_rows):
                yield _parquet_record(unit, uri, rel, row, {name: cols[name][i] for name in columns})
                row += 1
    except Exception as exc:  # a corrupt page, a bad compression stream
        left = first + meta.num_rows - row
        if left > 0:
            stored = sum(meta.column(i).total_compressed_size for i in range(meta.num_columns))
            yield _quarantine(unit, uri, rel, row, f"unreadable Parquet rows: {_describe(exc)}", where="row",
                              records=left, size=max(1, stored))


def _column_values(column) -> list:
    """A column's values as Python objects, with strings as their UTF-8 bytes (`_Utf8`): converting a
    string column holding one invalid value fails for the whole batch, decoding each value fails for
    that row alone."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        binary = pa.large_binary() if pa.types.is_large_string(kind) else pa.binary()
        return [None if v is None else _Utf8(v) for v in column.cast(binary).to_pylist()]
    return column.to_pylist()


class _Utf8(bytes):
    """The bytes of a value from a string column (declared UTF-8, not yet checked)."""


def _parquet_text(field: str, value):
    """A string column's value as str; raises `_BadRecord` where its bytes are not UTF-8."""
    if not isinstance(value, _Utf8):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadRecord(f"invalid UTF-8 in field {field!r}") from None


def _parquet_record(unit: InputUnit, uri: str, rel: str, row: int, values: dict) -> dict:
    src = unit.source
    text = values[src.text_field]
    raw = text if isinstance(text, bytes) else b""
    try:
        if isinstance(text, _Utf8):
            _parquet_text(src.text_field, text)
            payload, charset = bytes(text), "utf-8"
        elif isinstance(text, bytes):  # a binary column: its charset is for extraction to find
            payload, charset = text, None
        else:
            return _quarantine(unit, uri, rel, row, f"text field {src.text_field!r} is null or not a string",
                               where="row", size=1)  # the row's place in the file: its size is not known
        meta: dict = {"path": printable(rel), "row": row}
        if src.id_field and src.id_field in values and src.id_field != src.text_field:
            meta[src.id_field] = _parquet_text(src.id_field, values[src.id_field])
        url = _parquet_text("url", values.get("url"))
        return _doc(unit, rel, row, url=url if isinstance(url, str) else None, created=None, meta=meta,
                    payload=payload, content_type="text", charset=charset)
    except _BadRecord as exc:
        return _quarantine(unit, uri, rel, row, str(exc), raw, where="row", size=max(1, len(raw)))
