"""Quarantine entries: what is kept of input that could not be processed, and how many records it was.

A reader or step describes bad input with its raw bytes; `seal` turns that into what is stored. Raw
bytes are personal data as often as the text is (a damaged mail is still full of addresses), so where
the bytes are UTF-8 text the entry keeps that text PII-scrubbed, and for bytes that are not text only
their digest and length, with the error. The bytes themselves are kept only when a user asks for them
(`data.quarantine.keep_raw`).
"""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc

from llm.data import schema


def quarantined_records(entries: pa.Table) -> int:
    """Input records the entries stand for: an entry without a `records` count is one record."""
    if not entries.num_rows:
        return 0
    if "records" not in entries.column_names:
        return entries.num_rows
    return int(pc.sum(pc.fill_null(entries.column("records"), 1)).as_py() or 0)


# Bytes that decode as UTF-8 with at most this share of damaged bytes are text (a record cut at the
# size limit, or a mail with one stray byte); anything more damaged is treated as binary.
_MAX_DAMAGED_SHARE = 0.01
_BINARY = {0, *range(1, 9), *range(14, 32)} - {27}  # C0 controls text does not hold (ESC aside)


def as_text(raw: bytes) -> str | None:
    """`raw` as text when it is UTF-8 text (a few damaged bytes become U+FFFD), else None."""
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    damaged = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
    if damaged > _MAX_DAMAGED_SHARE * len(text) + 3:  # +3: a multi-byte character cut at the end
        return None
    controls = sum(1 for b in raw[:4096] if b in _BINARY)
    if controls > _MAX_DAMAGED_SHARE * min(len(raw), 4096):
        return None
    return text


def seal(entries: pa.Table, scrub=None, keep_raw: bool = False) -> pa.Table:
    """Quarantine entries as stored: every count and size filled in, the bytes replaced by their digest
    and (when they are text) their text, and every text field passed through `scrub`.

    `scrub(values: list[str | None], sources: list[str]) -> list[str | None]` scrubs PII from the
    strings of the rows of the given sources (see `PiiStep.scrub_strings`); None keeps them as they are
    (PII scrubbing is off). `keep_raw` keeps the bytes themselves, unscrubbed, for debugging a reader.
    """
    n = entries.num_rows
    if not n:
        return schema.QUARANTINE_SCHEMA.empty_table()
    rows = entries.to_pylist()
    raws = [r.get("raw") or b"" for r in rows]
    texts = [r.get("text") if r.get("text") is not None else as_text(b) for r, b in zip(rows, raws)]
    sources = [r["source"] for r in rows]
    columns = {"location": [r["location"] for r in rows], "error": [r["error"] for r in rows], "text": texts}
    if scrub is not None:
        columns = {name: scrub(values, sources) for name, values in columns.items()}
    out = []
    for i, (r, b) in enumerate(zip(rows, raws)):
        out.append({
            "id": r["id"], "source": r["source"], "stage": r["stage"],
            "location": columns["location"][i], "error": columns["error"][i],
            "records": r.get("records") if r.get("records") is not None else 1,
            "records_known": r.get("records_known") if r.get("records_known") is not None else True,
            "size": r.get("size") if r.get("size") is not None else len(b),
            "digest": r.get("digest") or (hashlib.blake2b(b, digest_size=16).hexdigest() if b else None),
            "text": columns["text"][i],
            "raw": b if keep_raw and b else None,
        })
    return pa.Table.from_pylist(out, schema.QUARANTINE_SCHEMA)
