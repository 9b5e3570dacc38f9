"""Supervised fine-tuning examples: reading, validation, the chat template and the held-out split.

Input is JSONL (or .jsonl.gz, or a folder of them read in sorted order), local or s3://. A record is a
prompt/response pair or a chat (`messages`: a list of `{role, content}`, role system/user/assistant).
A record that cannot be used is quarantined with its reason and never raised, so one bad line does not
stop a fine-tune; `SftExamples.counts` says how many were read, kept and quarantined, by reason.

An example becomes `bos`, then per message its role's marker, its content's tokens and the end marker.
Only assistant content and the end marker closing an assistant message are trained on (the mask).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from llm import storage
from llm.config import ChatTemplateConfig, SftDataConfig
from llm.data import schema
from llm.data.quarantine import seal
from llm.errors import InputNotFound, UserError
from llm.finetune.packing import SftExamples, SftSplit
from llm.tokenizer.token_bytes import TokenByteCounter

STAGE = "finetune"
SOURCE = "sft"
ROLES = ("system", "user", "assistant")
SUFFIXES = (".jsonl", ".jsonl.gz")
_CHUNK = 4096  # records templated per encode_batch call: fast, and memory stays bounded

Chat = tuple[tuple[str, str], ...]  # (role, content) per message


@dataclass(frozen=True)
class SftRecord:
    """A valid example: a stable id, where it came from, and its messages."""

    id: str
    location: str
    messages: Chat
    raw: bytes = field(default=b"", repr=False, compare=False)  # the line, for quarantining it later


@dataclass(frozen=True)
class Rejected:
    """A record that was not used: where, why (`reason` is a short key), and its bytes."""

    location: str
    reason: str
    error: str
    raw: bytes = field(default=b"", repr=False)
    size: int | None = None  # None: len(raw)
    records_known: bool = True  # False: a damaged file whose remaining records cannot be told apart


class BadRecord(ValueError):
    """A record that cannot be used; `reason` is the short key it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


# ------------------------------------------------------------------------------------------ reading


def sft_files(path: str | None) -> list[str]:
    """The JSONL files `path` names: itself when it ends in .jsonl(.gz), else those under it, sorted."""
    if not path:
        raise UserError("finetune.data.path is empty: name a JSONL file or a folder of them")
    if path.endswith(SUFFIXES):
        if not storage.exists(path):
            raise InputNotFound(f"finetune.data.path {path}: no such file")
        return [path]
    files = [f for f in storage.list_files(path) if f.endswith(SUFFIXES)]
    if not files:
        raise InputNotFound(f"finetune.data.path {path}: no .jsonl or .jsonl.gz files there")
    return files


def read_sft(cfg: SftDataConfig, rejected: list[Rejected] | None = None) -> Iterator[SftRecord]:
    """The valid records of `cfg.path` in file order (at most `cfg.max_examples`); each invalid one is
    appended to `rejected` instead. Blank lines are not records and are skipped."""
    files = sft_files(cfg.path)
    single = len(files) == 1 and files[0] == cfg.path
    kept = 0
    for uri in files:
        # `<file>:<line>` ids name the file relative to the folder, so they survive moving the data.
        name = uri.rsplit("/", 1)[-1] if single else storage.relative(uri, cfg.path)
        for lineno, line in _lines(uri, rejected):
            try:
                yield parse_record(line, cfg, f"{uri}#{lineno}", f"{name}:{lineno}")
            except BadRecord as bad:
                if rejected is not None:
                    rejected.append(Rejected(f"{uri}#{lineno}", bad.reason, str(bad), line))
                continue
            kept += 1
            if cfg.max_examples is not None and kept >= cfg.max_examples:
                return


def _lines(uri: str, rejected: list[Rejected] | None) -> Iterator[tuple[int, bytes]]:
    data = storage.read_bytes(uri)
    stream = gzip.GzipFile(fileobj=io.BytesIO(data)) if uri.endswith(".gz") else io.BytesIO(data)
    lineno = 0
    try:
        for lineno, line in enumerate(stream, 1):
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield lineno, line
    except (OSError, EOFError, zlib.error) as exc:
        # A damaged archive: the lines before the damage were used; the rest is one file-level entry.
        if rejected is not None:
            rejected.append(Rejected(f"{uri}#{lineno + 1}", "damaged_file", f"unreadable after line {lineno}: {exc}",
                                     size=len(data), records_known=False))


def parse_record(line: bytes, cfg: SftDataConfig, location: str, fallback_id: str) -> SftRecord:
    """One JSONL line as a record; raises `BadRecord` (with a reason) for a record that cannot be used."""
    try:
        obj = json.loads(line)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError: neither message quotes the line
        raise BadRecord("invalid_json", f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadRecord("not_object", f"a JSON {_json_type(obj)}, not an object")
    rid = obj.get("id")
    chat = cfg.format == "chat" or (cfg.format == "auto" and cfg.messages_field in obj)
    messages = _chat(obj, cfg.messages_field) if chat else _pair(obj, cfg.prompt_field, cfg.response_field)
    return SftRecord(rid if isinstance(rid, str) and rid else fallback_id, location, messages, line)


def _pair(obj: dict, prompt_field: str, response_field: str) -> Chat:
    texts = []
    for key in (prompt_field, response_field):
        if key not in obj:
            raise BadRecord("missing_field", f"no {key!r} key")
        value = obj[key]
        if not isinstance(value, str):
            raise BadRecord("not_string", f"{key!r} is a JSON {_json_type(value)}, not a string")
        if not value.strip():
            raise BadRecord("empty_text", f"{key!r} is empty")
        texts.append(value)
    return (("user", texts[0]), ("assistant", texts[1]))


def _chat(obj: dict, key: str) -> Chat:
    if key not in obj:
        raise BadRecord("missing_field", f"no {key!r} key")
    messages = obj[key]
    if not isinstance(messages, list):
        raise BadRecord("bad_message", f"{key!r} is a JSON {_json_type(messages)}, not an array")
    if not messages:
        raise BadRecord("empty_messages", f"{key!r} is empty")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise BadRecord("bad_message", f"message {i} is not a {{role, content}} object")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise BadRecord("unknown_role", f"message {i} has role {str(role)[:40]!r}, not one of {list(ROLES)}")
        if not isinstance(content, str):
            raise BadRecord("not_string", f"message {i}'s content is a JSON {_json_type(content)}, not a string")
        if role == "assistant" and not content.strip():
            raise BadRecord("empty_assistant", f"message {i} (assistant) is empty")
        out.append((role, content))
    if not any(role == "assistant" for role, _ in out):
        raise BadRecord("no_assistant", "no assistant message: nothing to train on")
    return tuple(out)


_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}


def _json_type(value: object) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


# ----------------------------------------------------------------------------------------- template


@dataclass(frozen=True)
class TemplateIds:
    """The template's token ids: bos (None when off), each role's marker, and the end marker."""

    bos: int | None
    roles: dict[str, int]
    end: int


def template_ids(template: ChatTemplateConfig, tokenizer) -> TemplateIds:
    """Resolve the markers; a marker that is not one piece of the tokenizer is a `UserError`."""
    ids = {}
    for name in (*ROLES, "end"):
        marker = getattr(template, name)
        pid = tokenizer.piece_id(marker)
        if pid is None:
            raise UserError(f"finetune.template.{name} {marker!r} is not a single token of the tokenizer: add it "
                            "to tokenizer.special_tokens and retrain the tokenizer")
        ids[name] = pid
    return TemplateIds(tokenizer.bos_id if template.bos else None, {r: ids[r] for r in ROLES}, ids["end"])


def apply_template(chats: list[Chat], template: ChatTemplateConfig,
                   tokenizer) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(ids int32, mask uint8, text bytes uint16) per chat; mask 1 marks the tokens trained on as
    next-token targets; text bytes are the UTF-8 bytes of message content each token stands for
    (markers and bos none), so a response's tokens sum to its content's length."""
    marks = template_ids(template, tokenizer)
    system = template.default_system or None
    chats = [c if system is None or any(r == "system" for r, _ in c) else (("system", system), *c) for c in chats]
    contents = [content for chat in chats for _, content in chat]
    encoded = tokenizer.encode_batch(contents)
    bodies = iter(zip(encoded, TokenByteCounter(tokenizer).counts_batch(contents, encoded)))
    out = []
    for chat in chats:
        ids, mask, nbytes = ([marks.bos], [0], [0]) if marks.bos is not None else ([], [], [])
        for role, _ in chat:
            body, body_bytes = next(bodies)
            trained = int(role == "assistant")
            ids += [marks.roles[role], *body, marks.end]
            mask += [0, *[trained] * len(body), trained]
            nbytes += [0, *body_bytes.tolist(), 0]
        out.append((np.asarray(ids, np.int32), np.asarray(mask, np.uint8), np.asarray(nbytes, np.uint16)))
    return out


# ------------------------------------------------------------------------------------------ holdout


def holdout_key(example_id: str) -> float:
    """The example's place in [0, 1): blake2b of its id, unsalted, so the split is the same every run."""
    digest = hashlib.blake2b(example_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def holdout(example_ids: list[str], val_fraction: float) -> np.ndarray:
    """True for the examples held out: those whose key falls below `val_fraction`. With two or more
    examples each side gets at least one: the lowest key goes to validation if none did, the highest
    to training if all did (both depend only on the ids, not on their order)."""
    keys = np.array([holdout_key(i) for i in example_ids], dtype=np.float64)
    val = keys < val_fraction
    if len(keys) >= 2 and not val.any():
        val[int(np.argmin(keys))] = True
    if len(keys) >= 2 and val.all():
        val[int(np.argmax(keys))] = False
    return val


# ---------------------------------------------------------------------------------------- prepared


def prepare_sft(cfg: SftDataConfig, template: ChatTemplateConfig, tokenizer, context_length: int,
                scrub: Callable | None = None) -> SftExamples:
    """Read, validate, template and split `cfg.path`'s examples.

    An example longer than `context_length + 1` tokens (it would need more than one window to predict
    its tokens) is quarantined as `too_long`, never truncated; so is one whose content holds a marker
    (it would be read as a turn boundary). `scrub` has `llm.data.quarantine.seal`'s signature and
    scrubs the quarantined lines' text; without it the entries keep no text (only digest and size)."""
    template_ids(template, tokenizer)  # a marker missing from the tokenizer fails before any reading
    rejected: list[Rejected] = []
    kept: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    records = read_sft(cfg, rejected)
    while chunk := list(islice(records, _CHUNK)):
        kept += _encode_chunk(chunk, template, tokenizer, context_length, rejected)
    val = holdout([name for name, *_ in kept], cfg.val_fraction)
    train, held = (SftSplit.build([k for k, v in zip(kept, val) if v == side]) for side in (False, True))
    tokens, trained = len(train.ids) + len(held.ids), int(train.mask.sum()) + int(held.mask.sum())
    counts = {
        "read": len(kept) + len(rejected), "kept": len(kept), "quarantined": len(rejected),
        "quarantined_by_reason": dict(sorted(Counter(r.reason for r in rejected).items())),
        "train_examples": len(train), "val_examples": len(held),
        "train_tokens": len(train.ids), "val_tokens": len(held.ids),
        "trained_token_share": trained / tokens if tokens else 0.0,
    }
    return SftExamples(train, held, counts, quarantine_entries(rejected, scrub), context_length, tokenizer.pad_id)


def _encode_chunk(chunk: list[SftRecord], template: ChatTemplateConfig, tokenizer, context_length: int,
                  rejected: list[Rejected]) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    markers = [getattr(template, name) for name in (*ROLES, "end")]
    clean = []
    for rec in chunk:
        if any(m in content for _, content in rec.messages for m in markers):
            rejected.append(Rejected(rec.location, "marker_in_content", "content holds a template marker", rec.raw))
        else:
            clean.append(rec)
    out = []
    for rec, (ids, mask, nbytes) in zip(clean, apply_template([r.messages for r in clean], template, tokenizer)):
        if len(ids) - 1 > context_length:
            rejected.append(Rejected(rec.location, "too_long", f"{len(ids)} tokens after the template, more than "
                                     f"context_length + 1 = {context_length + 1}", rec.raw))
        else:
            out.append((rec.id, ids, mask, nbytes))
    return out


def quarantine_entries(rejected: list[Rejected], scrub: Callable | None = None) -> pa.Table:
    """Rejected records as quarantine entries (stage "finetune"): the error and location, the line's
    digest and size, and its text only as `scrub` returns it (no text without `scrub`)."""
    rows = [{"id": schema.doc_id(SOURCE, r.location), "source": SOURCE, "location": r.location, "stage": STAGE,
             "error": f"{r.reason}: {r.error}", "records": 1, "records_known": r.records_known,
             "size": len(r.raw) if r.size is None else r.size, "raw": r.raw[: schema.QUARANTINE_RAW_LIMIT] or None}
            for r in rejected]
    table = seal(pa.Table.from_pylist(rows, schema.QUARANTINE_SCHEMA), scrub=scrub)
    if scrub is None and table.num_rows:
        index = table.schema.get_field_index("text")
        table = table.set_column(index, table.schema.field(index), pa.nulls(table.num_rows, pa.string()))
    return table
