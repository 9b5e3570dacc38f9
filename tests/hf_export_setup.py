"""Tiny checkpoints and a real multilingual tokenizer for the Hugging Face export tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llm.config import CHAT_SPECIAL_TOKENS, ModelConfig, TrainConfig
from llm.model.gpt import GPT
from llm.train.checkpoint import save_checkpoint, tokenizer_record

from tests.conftest import SHARED_DATA

VOCAB = 1500


def sft_texts() -> list[str]:
    """Each SFT pair of the development data (28 languages) as one text: prompt, newline, response."""
    rows = [json.loads(line) for line in (SHARED_DATA / "sft_dev.jsonl").read_text(encoding="utf-8").splitlines()]
    return [f"{r['prompt']}\n{r['response']}" for r in rows]


def train_tokenizer(path: Path) -> str:
    """A SentencePiece tokenizer trained on every 10th SFT pair with the chat markers, written to `path`;
    a character coverage below 1 leaves the rarer characters to byte fallback."""
    from llm.tokenizer.spm import train_sentencepiece

    path.write_bytes(train_sentencepiece(sft_texts()[::10], VOCAB, character_coverage=0.98,
                                         special_tokens=CHAT_SPECIAL_TOKENS))
    return str(path)


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(**{"layers": 2, "hidden_size": 32, "attention_heads": 4, "context_length": 64,
                          "vocab_size": VOCAB, "mlp_ratio": 3.0, **overrides})


def perturbed_model(cfg: ModelConfig, seed: int = 0) -> GPT:
    """A GPT whose every parameter (norm gains, biases included) is moved off its init, so a weight in the
    wrong place changes the logits; in eval mode."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def write_checkpoint(folder: Path, model: GPT, tokenizer: str | None) -> str:
    """A pretraining-style checkpoint of `model`, recording `tokenizer` (None: an older checkpoint)."""
    metrics = {"tokenizer": tokenizer_record(tokenizer)} if tokenizer else {}
    save_checkpoint(str(folder), model, None, 1, model.cfg, TrainConfig(), metrics)
    return str(folder)


def token_ids(seed: int, batch: int = 2, seq: int = 40) -> torch.Tensor:
    return torch.randint(4, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))
