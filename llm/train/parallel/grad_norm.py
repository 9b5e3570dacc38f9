"""Global gradient norm and clipping that equal the unsharded model's, under any strategy.

Plain gradients are either complete (DDP after its all-reduce) or replicated (norms and embeddings under
TP): they count once, locally. A DTensor gradient counts its local shard, and the squares are summed
over the mesh dimensions it is sharded on. Pipeline stages hold disjoint parameters, so their squares
are summed over the pipeline group; a tied output head on the last stage is the same tensor as the
first stage's embedding and is left out there.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.tensor import DTensor

from llm.train.parallel.context import ParallelContext


def global_grad_norm(
    params: Iterable[nn.Parameter], ctx: ParallelContext, exclude: frozenset[int] = frozenset()
) -> torch.Tensor:
    """L2 norm of all gradients of the whole (unsharded) model, as a float64 scalar on every rank.

    `exclude`: ids of parameters whose gradient is counted elsewhere (a tied copy).
    """
    plain = torch.zeros((), dtype=torch.float64, device=ctx.device)
    sharded: dict[tuple, torch.Tensor] = {}
    meshes: dict[tuple, object] = {}
    for p in params:
        g = p.grad
        if g is None or id(p) in exclude:
            continue
        if isinstance(g, DTensor):
            # Any non-replicated placement splits the tensor (Shard, and _StridedShard under FSDP+TP).
            dims = tuple(i for i, placement in enumerate(g.placements) if not placement.is_replicate())
            # Keyed by mesh layout and sharded dims; insertion order is the parameter order, the same
            # on every rank of a group, so the collectives below line up.
            key = (tuple(g.device_mesh.mesh.flatten().tolist()), dims)
            meshes[key] = g.device_mesh
            local = g.to_local().detach().to(torch.float64).pow(2).sum()
            sharded[key] = sharded[key] + local if key in sharded else local
        else:
            plain += g.detach().to(torch.float64).pow(2).sum()
    total = plain
    for key, squares in sharded.items():
        for dim in key[1]:
            dist.all_reduce(squares, group=meshes[key].get_group(dim))
        total = total + squares
    if ctx.pp > 1:
        dist.all_reduce(total, group=ctx.group("pp"))
    return total.sqrt()


def clip_grads(params: Iterable[nn.Parameter], max_norm: float, total_norm: torch.Tensor) -> None:
    """Scale gradients in place so their global norm is at most `max_norm` (torch's formula)."""
    coef = max_norm / (float(total_norm) + 1e-6)
    if coef >= 1.0:
        return
    for p in params:
        if p.grad is not None:
            p.grad.mul_(coef)
