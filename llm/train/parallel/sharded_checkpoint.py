"""Sharded checkpoints of FSDP/TP runs with torch.distributed.checkpoint (DCP).

Each rank writes only the model and optimizer shards it holds (`__<rank>_0.distcp`) into the folder
`SHARDED_DIR` of its own local checkpoint folder, and rank 0 also writes the `.metadata` index. The
folders every rank reports have the same layout, so merging them (Ray Train does, as does
`llm.train.loop.checkpoint_to`) gives one folder that DCP loads back on any rank: nothing the size of
the whole model or optimizer is built on one host for resuming.

Tensor-parallel ranks hold the fused qkv rows in a per-degree layout (`sharding.apply_tensor_parallel`),
so a sharded checkpoint resumes with the same `tensor_parallel` degree it was written with.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from llm.train.parallel.runner import ParallelModel

#: Subfolder of a checkpoint folder holding the DCP files.
SHARDED_DIR = "sharded"
#: `state.json` value of `optimizer_format` for checkpoints whose model and optimizer state are in DCP.
DCP_FORMAT = "dcp"


def save_sharded(parallel: ParallelModel, optimizer: torch.optim.Optimizer, folder: str) -> None:
    """Write this rank's shards of the model and optimizer state to `<folder>/sharded`.

    Collective: call on every rank.
    """
    model_sd, optim_sd = get_state_dict(parallel.module, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    path = Path(folder) / SHARDED_DIR
    path.mkdir(parents=True, exist_ok=True)
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(path)))


def load_sharded(parallel: ParallelModel, optimizer: torch.optim.Optimizer, sharded_dir: str) -> None:
    """Load the shards of this rank from a DCP folder into the (already parallelised) model and its
    optimizer. Collective: call on every rank, with the strategy and degrees the folder was written with."""
    # The state dicts of this rank are the template: DCP reads into their (sharded) tensors in place.
    model_sd, optim_sd = get_state_dict(parallel.module, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, storage_reader=dcp.FileSystemReader(sharded_dir))
    set_state_dict(parallel.module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
