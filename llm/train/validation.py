"""Held-out loss: mean next-token cross-entropy over the deterministic validation windows, and the same
loss in bits per byte of text where the token dataset records the bytes each token stands for."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from llm.train.data import TokenSplit, val_batch_starts, val_window_starts, windows_to_batch
from llm.train.parallel import ParallelModel, all_reduce_sum, world


@dataclass(frozen=True)
class HeldOutScore:
    """Loss over scored tokens: `loss` in nats per token over `tokens` targets; `bytes` the UTF-8 bytes
    of text those targets stand for (None when the data does not record them)."""

    loss: float
    tokens: int
    bytes: int | None = None

    @property
    def perplexity(self) -> float:
        """exp(loss): depends on the tokenizer, like the loss."""
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float | None:
        """Summed loss in bits over the bytes of text scored, which does not depend on the tokenizer:
        loss * tokens / (ln 2 * bytes). None without byte counts (or with no bytes scored)."""
        if not self.bytes:
            return None
        return self.loss * self.tokens / (math.log(2) * self.bytes)


def target_bytes(split: TokenSplit, starts: np.ndarray, context_length: int) -> int:
    """UTF-8 bytes of text the targets of the windows at `starts` stand for: window s predicts tokens
    s+1 .. s+context_length (its first token is only an input), so those are the ones counted."""
    return sum(split.window_bytes(int(s) + 1, context_length) for s in starts)


@torch.no_grad()
def held_out_score(
    model: nn.Module,
    split: TokenSplit,
    context_length: int,
    batch_size: int,
    num_batches: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    parallel: ParallelModel | None = None,
) -> HeldOutScore:
    """Loss, tokens and bytes of text scored over `num_batches` batches of `batch_size` windows.

    Every rank of the current process group evaluates its share of the batches and the sums are
    all-reduced, so the result is the same for any world size. Call it on all ranks. The model is put
    in eval mode for the duration and restored afterwards.

    `parallel`: the model as a strategy split it; batches are then shared by data-parallel rank, and
    only the ranks that hold the logits (last stage, first tensor-parallel rank) add to the sums. Every
    rank runs the same number of forwards: one whose share is a batch short repeats the first batch
    without counting it (an fsdp forward all-gathers weights, which waits for every rank).
    """
    rank, world_size = world()
    contributes = True
    if parallel is not None:
        model = parallel.module
        rank, world_size, contributes = parallel.ctx.dp_rank, parallel.ctx.dp, parallel.ctx.reports
    was_training = model.training
    model.eval()
    loss_sum, count, nbytes = 0.0, 0, 0
    batches: Iterable = ((starts, True) for starts in val_batch_starts(len(split), context_length, batch_size,
                                                                       num_batches, rank, world_size))
    if parallel is not None:
        all_starts = val_window_starts(len(split), context_length, num_batches * batch_size)
        total = -(-len(all_starts) // batch_size)  # the last batch may be short
        short = -(-total // world_size) - len(range(rank, total, world_size))
        batches = itertools.chain(batches, [(all_starts[:batch_size], False)] * short)
    try:
        for starts, counted in batches:
            inputs, targets = (t.to(device) for t in windows_to_batch(split, starts, context_length))
            if parallel is not None:
                logits = parallel.logits(inputs)
            else:
                with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                    logits, _ = model(inputs)
            if logits is None or not contributes or not counted:
                continue
            # Summed (not averaged) per batch so that a shorter last batch is weighted by its tokens.
            loss_sum += F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction="sum"
            ).item()
            count += targets.numel()
            if split.has_bytes:
                nbytes += target_bytes(split, starts, context_length)
    finally:
        model.train(was_training)
    # float64 sums: byte counts stay exact up to 2**53.
    loss_sum, count_f, bytes_f = all_reduce_sum([loss_sum, float(count), float(nbytes)], device)
    return HeldOutScore(loss_sum / count_f, int(count_f), int(bytes_f) if split.has_bytes else None)


def validation_loss(*args, **kwargs) -> tuple[float, int]:
    """(mean loss in nats per token, tokens evaluated): `held_out_score` (the same arguments) without
    the bytes."""
    score = held_out_score(*args, **kwargs)
    return score.loss, score.tokens
