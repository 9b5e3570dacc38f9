"""Where this process sits: its rank on a (pp, dp, tp) device mesh and the groups to talk over.

Ranks are laid out pipeline-major, tensor-minor: rank = pp_rank * dp * tp + dp_rank * tp + tp_rank, so
the ranks of one tensor-parallel group are neighbours (on a GPU host, the same NVLink island).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from llm.config import TrainConfig


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all ranks (the values themselves with no process group)."""
    _, world_size = world()
    if world_size == 1:
        return list(values)
    # float64: sums of per-token losses over many batches must not lose digits.
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


@dataclass
class ParallelContext:
    """Degrees and coordinates of this rank. `mesh` is None in a world of one."""

    strategy: str
    device: torch.device
    dp: int = 1
    tp: int = 1
    pp: int = 1
    dp_rank: int = 0
    tp_rank: int = 0
    pp_rank: int = 0
    mesh: DeviceMesh | None = None

    @classmethod
    def create(cls, cfg: TrainConfig, device: torch.device) -> "ParallelContext":
        """The context for `cfg` in the current process group (a world of one without one)."""
        _, world_size = world()
        if world_size == 1:
            return cls(strategy=cfg.strategy, device=device)
        tp, pp = cfg.tensor_parallel, cfg.pipeline_parallel
        if world_size % (tp * pp):
            raise ValueError(f"{world_size} workers cannot hold tensor_parallel {tp} x pipeline_parallel {pp}")
        dp = world_size // (tp * pp)
        mesh = init_device_mesh(device.type, (pp, dp, tp), mesh_dim_names=("pp", "dp", "tp"))
        return cls(
            strategy=cfg.strategy, device=device, dp=dp, tp=tp, pp=pp,
            dp_rank=mesh.get_local_rank("dp"), tp_rank=mesh.get_local_rank("tp"), pp_rank=mesh.get_local_rank("pp"),
            mesh=mesh,
        )

    def group(self, dim: str) -> dist.ProcessGroup:
        """Process group along mesh dimension `dim` ("pp", "dp" or "tp")."""
        assert self.mesh is not None, "no process group in a world of one"
        return self.mesh.get_group(dim)

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def reports(self) -> bool:
        """Whether this rank contributes to reduced losses: one rank per data-parallel replica (the
        last pipeline stage, which holds the loss, and the first tensor-parallel rank, whose copy of
        the replicated loss stands for its group)."""
        return self.is_last_stage and self.tp_rank == 0
