"""Held-out loss: mean next-token cross-entropy over the deterministic validation windows."""

from __future__ import annotations

import itertools
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm.train.data import TokenSplit, val_batches, val_window_starts, windows_to_batch
from llm.train.parallel import ParallelModel, all_reduce_sum, world


@torch.no_grad()
def validation_loss(
    model: nn.Module,
    split: TokenSplit,
    context_length: int,
    batch_size: int,
    num_batches: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    parallel: ParallelModel | None = None,
) -> tuple[float, int]:
    """(mean loss in nats per token, tokens evaluated) over `num_batches` batches of `batch_size` windows.

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
    loss_sum, count = 0.0, 0
    batches: Iterable = ((batch, True) for batch in val_batches(split, context_length, batch_size, num_batches,
                                                                  rank, world_size))
    if parallel is not None:
        starts = val_window_starts(len(split), context_length, num_batches * batch_size)
        total = -(-len(starts) // batch_size)  # the last batch may be short
        short = -(-total // world_size) - len(range(rank, total, world_size))
        padding = (windows_to_batch(split, starts[:batch_size], context_length), False)
        batches = itertools.chain(batches, [padding] * short)
    try:
        for (inputs, targets), counted in batches:
            inputs, targets = inputs.to(device), targets.to(device)
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
    finally:
        model.train(was_training)
    loss_sum, count_f = all_reduce_sum([loss_sum, float(count)], device)
    return loss_sum / count_f, int(count_f)
