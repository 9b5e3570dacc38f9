"""The Arrow schemas every dataset shares.

A document dataset holds `DOC_SCHEMA` columns plus signal columns stages append (language, quality
signals, dedup cluster, PII counts). Dropped documents go to `rejected/` with `REJECT_FIELDS` appended;
bad input goes to `quarantine/` as `QUARANTINE_SCHEMA` rows: where the bad bytes are text, their PII-scrubbed
text; otherwise only their digest, length and the error (`llm.data.quarantine`).
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

DOC_FIELDS = [
    pa.field("id", pa.string(), nullable=False),  # stable: derived from source + location + offset
    pa.field("text", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),  # source label from config (web, code, ...)
    pa.field("url", pa.string()),  # origin URL or file URI
    pa.field("created", pa.string()),  # ISO-8601 capture or modification time when known
    pa.field("meta", pa.string()),  # JSON object: reader-specific fields
]
DOC_SCHEMA = pa.schema(DOC_FIELDS)

# The raw form between a reader and extraction: payload bytes plus how to decode them.
RAW_SCHEMA = pa.schema(
    [f for f in DOC_FIELDS if f.name != "text"]
    + [
        pa.field("payload", pa.binary(), nullable=False),
        pa.field("content_type", pa.string(), nullable=False),  # "html" or "text"
        pa.field("charset", pa.string()),  # declared charset, when the source says
    ]
)
# A reader that recognises input to leave out (a vendored or generated file in a repository) yields it
# with content_type READER_DROP + rule and meta["drop"] = {value, threshold, detail}: extraction drops
# it with that rule, so it is counted and listed in `rejected/` like any filter's drop.
READER_DROP = "dropped:"

REJECT_FIELDS = [
    pa.field("stage", pa.string(), nullable=False),  # stage/step that dropped it
    pa.field("rule", pa.string(), nullable=False),  # the rule, e.g. "empty_after_normalize"
    pa.field("value", pa.float64()),  # measured value, when the rule measures one
    pa.field("threshold", pa.float64()),  # threshold it was compared with
    pa.field("detail", pa.string()),  # free text, e.g. the keeper's id for a duplicate
]

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("location", pa.string(), nullable=False),  # file URI + "#offset" or "#line"
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=False),
        # Input records the entry stands for: 1 for one bad record, N for a damaged file whose N records
        # could be told apart but not read. `records_known` is false for a file that cannot be split:
        # `records` is then 1, a lower bound, and `size` says how much input it was.
        pa.field("records", pa.int64()),
        pa.field("records_known", pa.bool_()),
        pa.field("size", pa.int64()),  # bytes of the offending input (the record, or the whole file)
        pa.field("digest", pa.string()),  # blake2b-128 of the bytes held back (up to QUARANTINE_RAW_LIMIT)
        pa.field("text", pa.string()),  # those bytes as text, PII scrubbed, when they are UTF-8 text
        pa.field("raw", pa.binary()),  # the bytes themselves: only with `data.quarantine.keep_raw`
    ]
)
QUARANTINE_RAW_LIMIT = 64 * 1024


def doc_id(*parts: object) -> str:
    """Stable 20-hex-digit id from the parts that locate a document (source, file, offset)."""
    key = "\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(key, digest_size=10).hexdigest()


def text_hash(text: str) -> str:
    """Content hash used for exact dedup and the train/validation/test split."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def reject_schema(doc_schema: pa.Schema) -> pa.Schema:
    """Schema of `rejected/` shards for documents of `doc_schema`."""
    return pa.schema(list(doc_schema) + REJECT_FIELDS)


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
