"""Tokenizer training as a stage: sample the shards (in parallel), train the tokenizer (one task).

The sample is chosen by a hash of each document's id against the wanted fraction, so it is spread
over every shard, the same on every run, and needs one pass with no global shuffle.
"""

from __future__ import annotations

import hashlib
import time

from llm import storage, versions
from llm.config import TokenizerConfig
from llm.data.dataset import read_manifest
from llm.errors import UserError
from llm.lineage import identity, of_input
from llm.tokenizer.base import tokenizer_from_bytes
from llm.tokenizer.card import HeldOut, compute_card, write_card


def train_tokenizer(texts, cfg: TokenizerConfig) -> bytes:
    """The serialized tokenizer `cfg` asks for, trained on `texts` (an iterable of documents)."""
    tokens = [*cfg.special_tokens, *cfg.user_tokens]
    if cfg.library == "hf":
        from llm.tokenizer.hf import train_hf

        return train_hf(texts, cfg.vocab_size, cfg.model_type, cfg.special_ids(), tokens)
    from llm.tokenizer.spm import train_sentencepiece

    return train_sentencepiece(texts, cfg.vocab_size, cfg.model_type, cfg.character_coverage, cfg.byte_fallback,
                               cfg.max_sentence_length, special_tokens=tokens, special_ids=cfg.special_ids())



def _selected(doc_id: str, seed: int, fraction: float) -> bool:
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def _sample_shard(uri: str, seed: int, fraction: float) -> list[str]:
    table = storage.read_parquet(uri, columns=["id", "text"])
    return [t for i, t in zip(table.column("id").to_pylist(), table.column("text").to_pylist())
            if _selected(i, seed, fraction)]


def tokenizer_uri(tokenizer_dir: str) -> str:
    """The model file of the tokenizer's current version (or of `dir@version`)."""
    root = versions.split(tokenizer_dir)[0]
    return storage.join(root, read_manifest(tokenizer_dir)["model"])


def tokenizer_identity(shards_manifest: dict, cfg: TokenizerConfig):
    """The tokenizer's identity. By default (`on_new_data: keep`) it depends on how the shards are
    made, not on which documents they hold, so a refresh that only adds documents keeps the vocabulary
    (token ids stay comparable across refreshes); `retrain` follows the data itself."""
    version, recipe = of_input(shards_manifest)
    inputs = {"shards": version} if cfg.on_new_data == "retrain" else {"shards_recipe": recipe}
    return identity("tokenizer", cfg, inputs, {"shards": recipe})


def run_tokenizer_training(shards_uri: str, out_uri: str, cfg: TokenizerConfig, executor) -> dict:
    """Train on a sample of `shards_uri` into a new version of `out_uri` (spm-<version>.model and
    .vocab, or hf-<version>.json; and card-<version>.json/.md measured on held-out documents), unless a
    version with the same identity exists."""
    started = time.time()
    shards_root = versions.split(shards_uri)[0]
    manifest = read_manifest(shards_uri)
    ident = tokenizer_identity(manifest, cfg)
    reused = versions.reuse(out_uri, ident)
    if reused is not None:
        return reused
    total = sum(s["extra"].get("text_bytes", 0) for s in manifest["shards"])
    if total == 0:
        raise UserError(f"tokenizer: {shards_uri} holds no text to train on (did the data filters drop "
                        "every document? `llmpipe stats` on the datasets shows where they went)")
    fraction = min(1.0, cfg.sample_bytes / total)
    files = [storage.join(shards_root, s["files"]["data"]) for s in manifest["shards"]]
    samples = executor.map(lambda f: _sample_shard(f, cfg.seed, fraction), files, desc="tokenizer: sample")
    texts = [t for part in samples for t in part]

    def train(_):
        return train_tokenizer(texts, cfg)

    model = executor.map(train, [None], desc="tokenizer: train")[0]
    tok = tokenizer_from_bytes(model)
    if cfg.library == "hf":
        model_rel = f"hf-{ident.version}.json"
        stored = {"model": model_rel}
    else:
        from llm.tokenizer.spm import vocab_text

        model_rel = f"spm-{ident.version}.model"
        stored = {"model": model_rel, "vocab": f"spm-{ident.version}.vocab"}
        storage.write_text(storage.join(out_uri, stored["vocab"]), vocab_text(tok))
    sha = storage.write_bytes(storage.join(out_uri, model_rel), model)
    result = {
        "model": model_rel,
        "files": stored,
        "library": cfg.library,
        "model_type": cfg.model_type,
        "sha256": sha,
        "vocab_size": tok.vocab_size,
        "special_tokens": {"pad": tok.pad_id, "unk": tok.unk_id, "bos": tok.bos_id, "eos": tok.eos_id},
        "sample": {"documents": len(texts), "bytes": sum(len(t.encode()) for t in texts),
                   "fraction": round(fraction, 6)},
    }
    held_out = HeldOut.bounded(cfg.seed, cfg.card_bytes, total - result["sample"]["bytes"])
    in_sample = lambda doc_id, source, lang: _selected(doc_id, cfg.seed, fraction)
    card = compute_card(tok, files, in_sample, held_out, executor, result["sample"])
    result["files"].update(write_card(out_uri, ident.version, card))
    version = manifest["version"]
    return versions.publish(out_uri, ident, result, {"shards": versions.pinned(shards_root, version)}, started)
