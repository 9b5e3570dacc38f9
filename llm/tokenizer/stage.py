"""Tokenizer training as a stage: sample the shards (in parallel), train the tokenizer (one task).

The sample (`llm.tokenizer.sample`) is chosen per shard on the workers by a hash of each document's id
against its stratum's fraction, written to part files under `<out>/_sample/<version>/` and streamed to
the trainer from there; the parts are deleted once the model is written.
"""

from __future__ import annotations

import time

from llm import storage, versions
from llm.config import TokenizerConfig
from llm.data.dataset import read_manifest
from llm.errors import UserError
from llm.lineage import identity, of_input
from llm.tokenizer.base import tokenizer_from_bytes
from llm.tokenizer.card import HeldOut, compute_card, write_card
from llm.tokenizer.sample import SamplePlan, SampleTexts, build_sample, remove_sample, stratum
from llm.tokenizer.train import train_tokenizer


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
    files = [storage.join(shards_root, s["files"]["data"]) for s in manifest["shards"]]
    scratch = storage.join(out_uri, "_sample", ident.version)
    # The card's documents are held out first, so it measures unseen text even when the sample would
    # otherwise take the whole corpus.
    held_out = HeldOut(cfg.seed, HeldOut.reserved_share(cfg.card_bytes, total, cfg.card_max_share))
    # SentencePiece trains on lines: the workers write them as its own text files, which it reads itself.
    lines = cfg.max_sentence_length if cfg.library == "sentencepiece" else None
    parts, sample = build_sample(files, scratch, cfg.sample_bytes, cfg.sample_weights, cfg.seed, executor,
                                 known_total=total, reserve=held_out.fraction, line_length=lines)
    texts = SampleTexts(tuple(parts))

    def train(_):
        return train_tokenizer(texts, cfg)

    try:
        # One task: with `num_threads` set it holds that many CPUs, so its threads are not oversubscribed.
        cpus = {"num_cpus": cfg.num_threads} if cfg.num_threads > 1 else {}
        model = executor.map(train, [None], desc="tokenizer: train", **cpus)[0]
    finally:  # scratch: a rerun samples again (the same documents)
        remove_sample(scratch)
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
        "sample": sample,
    }
    plan = SamplePlan.from_manifest(sample)
    in_sample = lambda doc_id, source, lang: plan.in_sample(doc_id, stratum(source, lang))
    card = compute_card(tok, files, in_sample, held_out, executor, result["sample"])
    result["files"].update(write_card(out_uri, ident.version, card))
    version = manifest["version"]
    return versions.publish(out_uri, ident, result, {"shards": versions.pinned(shards_root, version)}, started)
