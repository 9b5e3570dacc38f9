"""Tokenizer training as a stage: sample the shards (in parallel), train SentencePiece (one task).

The sample is chosen by a hash of each document's id against the wanted fraction, so it is spread
over every shard, the same on every run, and needs one pass with no global shuffle.
"""

from __future__ import annotations

import hashlib

from llm import storage
from llm.config import TokenizerConfig
from llm.data.dataset import dumps, read_manifest
from llm.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece

MODEL_FILE = "spm.model"
VOCAB_FILE = "spm.vocab"


def _selected(doc_id: str, seed: int, fraction: float) -> bool:
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def _sample_shard(uri: str, seed: int, fraction: float) -> list[str]:
    table = storage.read_parquet(uri, columns=["id", "text"])
    return [t for i, t in zip(table.column("id").to_pylist(), table.column("text").to_pylist())
            if _selected(i, seed, fraction)]


def tokenizer_uri(out_uri: str) -> str:
    return storage.join(out_uri, MODEL_FILE)


def run_tokenizer_training(shards_uri: str, out_uri: str, cfg: TokenizerConfig, config_hash: str,
                           executor) -> dict:
    """Train on a sample of `shards_uri`; writes spm.model, spm.vocab and _manifest.json to `out_uri`."""
    manifest = read_manifest(shards_uri)
    inputs_digest = hashlib.sha256(
        "".join(s["sha256"] for s in manifest["shards"]).encode()).hexdigest()[:16]
    done = storage.join(out_uri, "_manifest.json")
    if storage.exists(done) and storage.exists(tokenizer_uri(out_uri)):
        previous = read_manifest(out_uri)
        if previous.get("config_hash") == config_hash and previous.get("inputs_digest") == inputs_digest:
            return previous
    total = sum(s["extra"].get("text_bytes", 0) for s in manifest["shards"])
    if total == 0:
        raise ValueError(f"tokenizer: {shards_uri} holds no text to train on")
    fraction = min(1.0, cfg.sample_bytes / total)
    files = [storage.join(shards_uri, s["files"]["data"]) for s in manifest["shards"]]
    samples = executor.map(lambda f: _sample_shard(f, cfg.seed, fraction), files, desc="tokenizer: sample")
    texts = [t for part in samples for t in part]

    def train(_):
        return train_sentencepiece(
            texts, cfg.vocab_size, cfg.model_type, cfg.character_coverage, cfg.byte_fallback,
            cfg.max_sentence_length)

    model = executor.map(train, [None], desc="tokenizer: train")[0]
    tok = SentencePieceTokenizer(model)
    sha = storage.write_bytes(tokenizer_uri(out_uri), model)
    vocab = "".join(f"{tok.sp.id_to_piece(i)}\t{tok.sp.get_score(i)}\n" for i in range(tok.vocab_size))
    storage.write_text(storage.join(out_uri, VOCAB_FILE), vocab)
    result = {
        "stage": "tokenizer",
        "config_hash": config_hash,
        "inputs": [storage.relative(shards_uri, out_uri)],
        "inputs_digest": inputs_digest,
        "model": MODEL_FILE,
        "sha256": sha,
        "vocab_size": tok.vocab_size,
        "special_tokens": {"pad": tok.pad_id, "unk": tok.unk_id, "bos": tok.bos_id, "eos": tok.eos_id},
        "sample": {"documents": len(texts), "bytes": sum(len(t.encode()) for t in texts),
                   "fraction": round(fraction, 6)},
    }
    storage.write_text(done, dumps(result))
    return result
