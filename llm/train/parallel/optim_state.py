"""Optimizer state as one full, name-keyed dict, for strategies whose state is split across ranks.

Under FSDP/TP the AdamW moments are DTensor shards and under PP each stage optimizes its own
parameters, so `optimizer.state_dict()` of one rank is not the run's state. Here every rank gathers the
full state keyed by parameter name (GPT's names), pipeline stages merge theirs, and loading hands each
rank the part it owns, re-sharded. Meant for models that fit on one host (a full copy is built).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

from llm.train.parallel.runner import ParallelModel

#: `state.json` value of `optimizer_format` for optimizer files written by `full_optimizer_state`.
NAMED_FORMAT = "named-full"


def full_optimizer_state(parallel: ParallelModel, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole run's optimizer state keyed by parameter name, on CPU. Collective: call on every rank."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=False)
    state = get_optimizer_state_dict(parallel.module, optimizer, options=options)
    state = {
        "state": {k: {n: v.detach().cpu() if torch.is_tensor(v) else v for n, v in s.items()} for k, s in state["state"].items()},
        "param_groups": state["param_groups"],
    }
    if parallel.kind != "pp":
        return state
    parts: list[dict[str, Any] | None] = [None] * parallel.ctx.pp
    dist.all_gather_object(parts, state, group=parallel.ctx.group("pp"))
    merged: dict[str, Any] = {"state": {}, "param_groups": [dict(g, params=[]) for g in parts[0]["param_groups"]]}
    for part in parts:
        merged["state"].update(part["state"])
        for group, theirs in zip(merged["param_groups"], part["param_groups"]):
            group["params"].extend(theirs["params"])
    return merged


def load_full_optimizer_state(parallel: ParallelModel, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load what `full_optimizer_state` returned into this rank's optimizer (its shard or stage)."""
    if parallel.kind == "pp":
        mine = {name for name, _ in parallel.module.named_parameters()}
        state = {
            "state": {k: v for k, v in state["state"].items() if k in mine},
            "param_groups": [dict(g, params=[p for p in g["params"] if p in mine]) for g in state["param_groups"]],
        }
    set_optimizer_state_dict(parallel.module, optimizer, state, options=StateDictOptions(full_state_dict=True))
