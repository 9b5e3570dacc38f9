"""The tokenizer card: how well a trained tokenizer encodes text it was not trained on.

Held-out text is a bounded share of the documents the training sample left out, chosen by its own
seeded hash of the document id (independent of the sample's hash), read shard by shard on the
executor. Workers return per-stratum tallies (documents, bytes, tokens, unknown and byte-fallback
tokens, round-trip failures) and the ids they saw, never texts, so the driver holds no corpus text.

The card reports, per language, per source and overall: bytes per token (UTF-8 bytes / tokens), the
unknown rate (share of tokens that are `unk_id`), the byte-fallback rate (share of tokens in
`byte_fallback_ids()`), and documents whose `decode(encode(text)) != text`, with the first failing
document's id and character position (never its text: documents may hold personal data). Only the
`llm.tokenizer.base.Tokenizer` interface is used, so it works for every library.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from llm import storage
from llm.tokenizer.base import Tokenizer, tokenizer_from_bytes
from llm.tokenizer.sample import reserved

#: `in_sample(doc_id, source, lang)`: whether the training sample took the document.
InSample = Callable[[str, str, "str | None"], bool]

#: The manifest roles of the card's files (relative paths in `files`).
CARD_JSON, CARD_MD = "card", "card_md"
#: What MLflow logs them as (one tokenizer per run).
ARTIFACT_NAMES = {CARD_JSON: "card.json", CARD_MD: "card.md"}
#: Label of documents with no language (no language ID step ran on their source).
NO_LANGUAGE = "(none)"
#: Documents encoded per `encode_batch` call: bounds a worker's memory to a batch of texts.
ENCODE_BATCH = 256

_COUNTS = ("documents", "bytes", "tokens", "unk_tokens", "byte_fallback_tokens", "roundtrip_failures")


@dataclass(frozen=True)
class HeldOut:
    """Which documents the card reads: those outside the sample whose card hash falls below `fraction`."""

    seed: int
    fraction: float

    def selected(self, doc_id: str) -> bool:
        return reserved(doc_id, self.seed, self.fraction)

    @classmethod
    def bounded(cls, seed: int, card_bytes: int, held_out_bytes: int) -> "HeldOut":
        """A fraction that takes about `card_bytes` of the `held_out_bytes` the sample left."""
        return cls(seed, min(1.0, card_bytes / max(1, held_out_bytes)))

    @classmethod
    def reserved_share(cls, card_bytes: int, total_bytes: int, max_share: float) -> float:
        """The share of documents held out of the training sample for the card: about `card_bytes`,
        at most `max_share` of the corpus (so a small corpus still trains on most of its text)."""
        return min(max_share, card_bytes / max(1, total_bytes)) if card_bytes else 0.0


def _tally() -> dict:
    return {**{k: 0 for k in _COUNTS}, "first_roundtrip_failure": None}


def _add(into: dict, other: dict) -> None:
    for k in _COUNTS:
        into[k] += other[k]
    if into["first_roundtrip_failure"] is None:
        into["first_roundtrip_failure"] = other["first_roundtrip_failure"]


def first_difference(text: str, decoded: str) -> int:
    """The character position where `decoded` first differs from `text`."""
    return next((i for i, (a, b) in enumerate(zip(text, decoded)) if a != b), min(len(text), len(decoded)))


_loaded: dict[str, Tokenizer] = {}


def _tokenizer(model: bytes) -> Tokenizer:
    # One load per worker process and model, not one per shard.
    key = hashlib.sha256(model).hexdigest()
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = tokenizer_from_bytes(model)
    return _loaded[key]


def measure_texts(tok: Tokenizer, docs: Sequence[tuple[str, str, str, str | None]]) -> dict:
    """Tallies of `docs` ((id, text, source, lang) each) by stratum (`language:xx`, `source:yy`,
    `overall`) and the sorted distinct ids their encodings use."""
    unk, fallback = tok.unk_id, tok.byte_fallback_ids()
    strata: dict[str, dict] = {}
    seen: list[np.ndarray] = []
    for lo in range(0, len(docs), ENCODE_BATCH):
        batch = docs[lo:lo + ENCODE_BATCH]
        for (doc_id, text, source, lang), ids in zip(batch, tok.encode_batch([d[1] for d in batch])):
            arr = np.asarray(ids, dtype=np.int64)
            seen.append(np.unique(arr))
            doc = _tally()
            doc.update(documents=1, bytes=len(text.encode("utf-8")), tokens=len(arr),
                       unk_tokens=int((arr == unk).sum()), byte_fallback_tokens=int(np.isin(arr, fallback).sum()))
            decoded = tok.decode(ids)
            if decoded != text:
                doc["roundtrip_failures"] = 1
                doc["first_roundtrip_failure"] = {"doc_id": doc_id, "char": first_difference(text, decoded),
                                                  "chars": len(text)}
            for key in ("overall", f"language:{lang or NO_LANGUAGE}", f"source:{source}"):
                _add(strata.setdefault(key, _tally()), doc)
    ids_seen = np.unique(np.concatenate(seen)) if seen else np.zeros(0, dtype=np.int64)
    return {"strata": strata, "ids_seen": ids_seen}


def measure_shard(uri: str, model: bytes, in_sample: InSample, held_out: HeldOut) -> dict:
    """`measure_texts` of one shard's held-out documents, read a row group at a time (the text column
    only of row groups that hold a chosen document)."""
    tok = _tokenizer(model)
    parts = []
    with storage.parquet_file(uri) as pf:
        has_lang = "lang" in pf.schema_arrow.names
        keys = ["id", "source"] + (["lang"] if has_lang else [])
        for g in range(pf.num_row_groups):
            meta = pf.read_row_group(g, columns=keys).to_pydict()
            langs = meta["lang"] if has_lang else [None] * len(meta["id"])
            rows = [i for i, (d, s, lang) in enumerate(zip(meta["id"], meta["source"], langs))
                    if held_out.selected(d) and not in_sample(d, s, lang)]
            if rows:
                texts = pf.read_row_group(g, columns=["text"]).column("text")
                parts.append([(meta["id"][i], texts[i].as_py(), meta["source"][i], langs[i]) for i in rows])
    return measure_texts(tok, [d for part in parts for d in part])


def _rates(t: dict) -> dict:
    tokens = t["tokens"]
    return {
        **t,
        "bytes_per_token": round(t["bytes"] / tokens, 4) if tokens else None,
        "unk_rate": round(t["unk_tokens"] / tokens, 6) if tokens else None,
        "byte_fallback_rate": round(t["byte_fallback_tokens"] / tokens, 6) if tokens else None,
        "roundtrip_failure_rate": round(t["roundtrip_failures"] / t["documents"], 6) if t["documents"] else None,
    }


def model_type(tok: Tokenizer) -> str:
    """The model's algorithm (bpe, unigram, wordpiece, ...) as its stored file records it."""
    if tok.library == "hf":
        return str(json.loads(tok.model_bytes)["model"]["type"]).lower()
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    proto.ParseFromString(tok.model_bytes)
    return model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower()


def build_card(tok: Tokenizer, parts: Sequence[dict], held_out: HeldOut, sample: dict | None = None) -> dict:
    """The card from per-shard `measure_shard` results (in shard order: "first failure" is the
    first in that order)."""
    strata: dict[str, dict] = {"overall": _tally()}
    for part in parts:
        for key, t in part["strata"].items():
            _add(strata.setdefault(key, _tally()), t)
    seen = np.unique(np.concatenate([p["ids_seen"] for p in parts])) if parts else np.zeros(0, dtype=np.int64)
    by = {"language": {}, "source": {}}
    for key in sorted(k for k in strata if k != "overall"):
        kind, _, name = key.partition(":")
        by[kind][name] = _rates(strata[key])
    return {
        "library": tok.library,
        "model_type": model_type(tok),
        "vocab_size": tok.vocab_size,
        "special_ids": tok.special_ids(),
        "roles": {"pad": tok.pad_id, "unk": tok.unk_id, "bos": tok.bos_id, "eos": tok.eos_id},
        "byte_fallback_ids": int(len(tok.byte_fallback_ids())),
        "sample": sample or {},
        "held_out": {"seed": held_out.seed, "fraction": round(held_out.fraction, 6),
                     "documents": strata["overall"]["documents"], "bytes": strata["overall"]["bytes"]},
        "overall": _rates(strata["overall"]),
        "by_language": by["language"],
        "by_source": by["source"],
        "vocab_usage": {"ids_seen": int(len(seen)), "ids_never_used": int(tok.vocab_size - len(seen)),
                        "share": round(len(seen) / tok.vocab_size, 6)},
    }


def compute_card(tok: Tokenizer, shard_files: Sequence[str], in_sample: InSample, held_out: HeldOut, executor,
                 sample: dict | None = None) -> dict:
    """The card of `tok` on the held-out documents of `shard_files`, one executor item per shard."""
    model = tok.model_bytes
    parts = executor.map(lambda f: measure_shard(f, model, in_sample, held_out), list(shard_files),
                         desc="tokenizer: card")
    return build_card(tok, parts, held_out, sample)


def card_metrics(card: dict) -> dict:
    """The few figures logged as MLflow metrics (None where there was no held-out text)."""
    overall = card["overall"]
    return {"bytes_per_token": overall["bytes_per_token"], "unk_rate": overall["unk_rate"],
            "byte_fallback_rate": overall["byte_fallback_rate"], "vocab_usage": card["vocab_usage"]["share"],
            "roundtrip_failures": overall["roundtrip_failures"]}


def write_card(out_uri: str, version: str, card: dict) -> dict[str, str]:
    """Write card-<version>.json and .md beside the model; returns their manifest `files` entries."""
    from llm.tokenizer.card_render import card_markdown

    files = {CARD_JSON: f"card-{version}.json", CARD_MD: f"card-{version}.md"}
    storage.write_text(storage.join(out_uri, files[CARD_JSON]),
                       json.dumps(card, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    storage.write_text(storage.join(out_uri, files[CARD_MD]), card_markdown(card))
    return files


def read_card(root: str, manifest: dict) -> dict | None:
    """The card a tokenizer version lists, None for a version made before cards existed."""
    rel = manifest.get("files", {}).get(CARD_JSON)
    return json.loads(storage.read_text(storage.join(root, rel))) if rel else None
