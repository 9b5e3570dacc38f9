"""What every format reader shares: the input unit, and the records built from its files.

`InputUnit` is one shard of the ingest pass. The format readers (`warc_reader`, `text_readers`) turn
what they read into raw documents (`RAW_SCHEMA` field names, built by `_doc`) and, for input that cannot
be read, quarantine entries (`QUARANTINE_SCHEMA` field names, built by `_quarantine`); `is_quarantine`
tells them apart. Ids come from the source name, the file's path relative to the unit's root and the
record's offset/line/row, so they are the same on every rerun and machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from llm import storage
from llm.config import SourceConfig
from llm.data import schema

_RESYNC_CHUNK = 1 << 20
# A record (a WARC gzip member, a JSONL line) is held in memory whole; larger ones are quarantined
# rather than allowed to exhaust a worker's memory (a small gzip member can decompress to gigabytes).
MAX_RECORD_BYTES = 256 << 20


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

    def shown(self, uri: str) -> str:
        """`relative(uri)` as text that can be stored (manifests, meta): see `printable`."""
        return printable(self.relative(uri))


def is_quarantine(record: dict) -> bool:
    """True for a quarantine entry from `read_unit`, False for a raw document."""
    return "error" in record


class SourceSkipped(Exception):
    """A source that planning leaves out because its config allows it to be absent (`git.if_missing:
    skip`); the message is the one warning line the user sees and the reason the ingest manifest keeps."""


class _BadRecord(Exception):
    """A record that parsed but holds a value that cannot be stored; the message names the field."""


def _doc(unit: InputUnit, rel: str, pos: object, *, url: str | None, created: str | None, meta: dict,
         payload: bytes, content_type: str, charset: str | None) -> dict:
    """A raw document; raises `_BadRecord` for a string Arrow cannot hold (not valid UTF-8)."""
    return {
        "id": schema.doc_id(unit.source.name, rel, pos),
        "source": unit.source.name,
        "url": _storable("url", url),
        "created": _storable("created", created),
        "meta": _meta_json(meta),
        "payload": payload,
        "content_type": content_type,
        "charset": charset,
    }


def _storable(field: str, value: str | None) -> str | None:
    """`value` if it is valid Unicode; a lone surrogate (a JSON `\\ud800` escape, say) is not."""
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _BadRecord(f"invalid Unicode (lone surrogate) in field {field!r}") from None
    return value


def _meta_json(meta: dict) -> str:
    try:
        text = json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str)
    except (ValueError, RecursionError) as exc:  # a deeply nested id value
        raise _BadRecord(f"meta cannot be stored as JSON: {_describe(exc)}") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        for key, value in sorted(meta.items()):
            _storable(key, json.dumps(value, ensure_ascii=False, default=str))
        raise
    return text


def printable(name: str) -> str:
    """A path as text that can be stored: bytes of a non-UTF-8 file name (which `os.listdir` hands back
    as surrogate escapes) are shown as backslash escapes. Ids keep the name itself, so they stay
    distinct and stable."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _quarantine(unit: InputUnit, uri: str, rel: str, pos: object, error: str, raw: bytes = b"",
                where: str = "offset", *, records: int = 1, records_known: bool = True,
                size: int | None = None) -> dict:
    """A quarantine entry for `records` input records at `pos`; `size` (default: the length of `raw`)
    is how many bytes of input they were. `records_known` is False where the input could not be split
    into records: `records` is then a lower bound. An entry about a whole file (`where="file"`) is
    located by the file alone."""
    location = printable(uri) if where == "file" else f"{printable(uri)}#{where}={pos}"
    return {
        "id": schema.doc_id(unit.source.name, rel, pos),
        "source": unit.source.name,
        "location": location,
        "stage": "ingest",
        "error": error,
        "records": records,
        "records_known": records_known,
        "size": len(raw) if size is None else size,
        "raw": raw[: schema.QUARANTINE_RAW_LIMIT],
    }


def _head(uri: str) -> bytes:
    """The first bytes of a file, for a quarantine entry about the whole file."""
    try:  # a ranged read: on S3 the rest of a multi-gigabyte object is not requested
        return storage.read_range(uri, 0, schema.QUARANTINE_RAW_LIMIT)
    except OSError:
        return b""


def _file_size(uri: str) -> int:
    try:
        return storage.size(uri)
    except OSError:  # a broken link or a file that vanished: nothing is known of it
        return 0

def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
