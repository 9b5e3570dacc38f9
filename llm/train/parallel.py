"""Parallel strategies applied to a plain model from the outside (the model file knows none of this)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def parallelize(model: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    """Wrap `model` (already on `device`) for the given strategy in the current process group.

    Returns the module to run forward/backward on; the plain `model` stays the one to save. With no
    process group or a world of one, the model is returned as it is.
    """
    _, world_size = world()
    if world_size == 1:
        return model
    if strategy == "ddp":
        # DDP broadcasts rank 0's weights at construction and all-reduces (averages) gradients in
        # buckets during backward; gloo on CPU, NCCL on GPU (picked by the process group).
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    raise ValueError(f"unknown parallel strategy {strategy!r} (supported: ddp)")


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all ranks (the values themselves with no process group)."""
    _, world_size = world()
    if world_size == 1:
        return list(values)
    # float64: sums of per-token losses over many batches must not lose digits.
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()
