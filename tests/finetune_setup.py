"""A small fine-tuning setup shared by the fine-tuning tests: a tokenizer with the chat markers and a
briefly pretrained base model, both trained here on `sft_dev.jsonl`, and the SFT file itself."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from llm.config import CHAT_SPECIAL_TOKENS, ModelConfig, TrainConfig

from tests.conftest import SHARED_DATA

SFT_DEV = SHARED_DATA / "sft_dev.jsonl"  # tests using it take the `shared_data` fixture (skips when absent)
#: Every 5th record: all 28 languages, 1,529 pairs.
STRIDE = 5


@dataclass(frozen=True)
class FinetuneSetup:
    """Paths of the prepared pieces: `tokenizer` (.model file), `base` (checkpoint folder), `sft` (JSONL)."""

    tokenizer: str
    base: str
    sft: str
    model_cfg: ModelConfig


def sft_records() -> list[dict]:
    rows = [json.loads(line) for line in SFT_DEV.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[::STRIDE]


def build_setup(folder: Path, context_length: int = 128, pretrain_steps: int = 150) -> FinetuneSetup:
    """Train the tokenizer, pretrain the base on the same texts (prompt and response as one document) and
    write the SFT pairs, under `folder`."""
    from llm.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece
    from llm.train.data import write_token_dataset
    from llm.train.loop import checkpoint_to, train

    folder.mkdir(parents=True, exist_ok=True)
    rows = sft_records()
    texts = [f"{r['prompt']}\n{r['response']}" for r in rows]
    tokenizer = SentencePieceTokenizer(train_sentencepiece(texts, 3000, special_tokens=CHAT_SPECIAL_TOKENS))
    (folder / "spm.model").write_bytes(tokenizer.model_proto)
    docs = [[tokenizer.bos_id, *ids, tokenizer.eos_id] for ids in tokenizer.encode_batch(texts)]
    write_token_dataset(str(folder / "tokens"), {"train": docs[20:], "val": docs[:20]}, vocab_size=tokenizer.vocab_size)
    model_cfg = ModelConfig(layers=2, hidden_size=64, attention_heads=4, context_length=context_length,
                            vocab_size=tokenizer.vocab_size)
    train_cfg = TrainConfig(num_workers=1, batch_size=16, micro_batch_size=16, learning_rate=1e-2, warmup_steps=10,
                            max_steps=pretrain_steps, eval_every=pretrain_steps, eval_batches=2,
                            checkpoint_every=pretrain_steps, log_every=50, system_metrics=False)
    torch.set_num_threads(2)
    train(model_cfg, train_cfg, str(folder / "tokens"), report=checkpoint_to(str(folder / "base")))
    with open(folder / "sft.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"id": r["id"], "prompt": r["prompt"], "response": r["response"]}, ensure_ascii=False) + "\n")
    return FinetuneSetup(str(folder / "spm.model"), str(folder / "base"), str(folder / "sft.jsonl"), model_cfg)
