"""A tiny, learnable token set and tiny configs shared by the training and evaluation tests."""

import numpy as np

from llm.config import ModelConfig, TrainConfig

VOCAB = 64


def counting_docs(n_docs: int, seed: int) -> list[list[int]]:
    """Documents that count upward through ids 4..63 (wrapping) from a random start: learnable."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        start, length = int(rng.integers(0, 60)), int(rng.integers(20, 120))
        docs.append([2, *[4 + (start + i) % 60 for i in range(length)], 3])
    return docs


def tiny_model() -> ModelConfig:
    return ModelConfig(layers=2, hidden_size=32, attention_heads=2, context_length=32)


def tiny_train(**overrides) -> TrainConfig:
    base = dict(
        num_workers=1, batch_size=8, micro_batch_size=8, learning_rate=1e-2, warmup_steps=5, max_steps=60,
        eval_every=30, eval_batches=4, checkpoint_every=30, log_every=10, seed=3,
    )
    base.update(overrides)
    return TrainConfig(**base)
