"""Tiny checkpoints for the rating tests: different random weights, each recording its tokenizer as
`state.json`'s `tokenizer.uri`, one of them shaped like a fine-tune (it answers through the chat template)."""

from __future__ import annotations

from pathlib import Path

import torch

from llm.config import ChatTemplateConfig, FinetuneConfig, ModelConfig, TrainConfig
from llm.train.checkpoint import tokenizer_record

TEXTS = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog.\n",
         "import os\nprint(os.getcwd())\n"] * 8


def tiny_checkpoints(root: Path) -> dict[str, str]:
    """Checkpoint folders `a`, `b` (plain) and `chat` (a fine-tune's state) under `root`, by name."""
    from llm.model.gpt import GPT
    from llm.tokenizer.spm import train_sentencepiece
    from llm.train.checkpoint import save_checkpoint

    markers = ChatTemplateConfig().model_dump(include={"system", "user", "assistant", "end"}).values()
    tokenizer = root / "tok.model"
    tokenizer.write_bytes(train_sentencepiece(TEXTS, vocab_size=320, special_tokens=list(markers)))
    cfg = ModelConfig(layers=1, hidden_size=32, attention_heads=2, context_length=32, vocab_size=320)
    train_cfg = TrainConfig(num_workers=1, batch_size=1, micro_batch_size=1)
    folders = {}
    for seed, name, extra in [(1, "a", {}), (2, "b", {}),
                              (3, "chat", {"finetune": {"config": FinetuneConfig().model_dump(mode="json")}})]:
        torch.manual_seed(seed)
        folders[name] = str(root / name)
        save_checkpoint(folders[name], GPT(cfg), None, 0, cfg, train_cfg,
                        metrics={"tokenizer": tokenizer_record(str(tokenizer)), **extra})
    return folders
