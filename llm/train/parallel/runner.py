"""`ParallelModel`: a plain GPT with the configured strategy applied, and the one training step it runs.

    ddp        DistributedDataParallel over the data-parallel group; gradient sync on the last micro-batch
    fsdp       FSDP2 fully_shard per block and root; gradient reduce-scatter on the last micro-batch
    tp         DTensor tensor parallelism on attention and MLP (every rank sees the same data)
    pp         pipeline stages run by a GPipe or 1F1B schedule, micro-batches = accumulation steps
    fsdp+tp    2-D mesh: TP inside a group, FSDP across groups
    ddp+pp     2-D mesh: pipelines side by side, gradients averaged across them after each step
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from llm.config import TrainConfig
from llm.model.gpt import GPT
from llm.train.parallel.context import ParallelContext
from llm.train.parallel.grad_norm import global_grad_norm
from llm.train.parallel.pipeline import (
    GPTStage,
    average_over_data_parallel,
    build_schedule,
    pipeline_forward,
    sum_tied_grads,
    tied_weights,
)
from llm.train.parallel.sharding import (
    apply_activation_checkpointing,
    apply_fsdp,
    apply_tensor_parallel,
    full_state_dict,
)

#: (inputs, targets), or (inputs, targets, positions, segments) for packed examples.
Batch = tuple[torch.Tensor, ...]


log = logging.getLogger("llm.train")


class ParallelModel:
    """Owns the wrapped model of this rank. `module` holds the parameters to optimize (a pipeline
    stage under pp); `full_state_dict` gives the whole GPT's weights in GPT's layout."""

    def __init__(self, model: GPT, ctx: ParallelContext, cfg: TrainConfig, autocast_dtype: torch.dtype | None = None,
                 gathered_checkpoints: bool = False):
        self.model, self.ctx, self.cfg = model, ctx, cfg
        # Full files even when sharded: what a fine-tune trains is small, and gathering keeps its
        # checkpoints to the trained weights instead of every shard of the frozen base.
        self.gathered_checkpoints = gathered_checkpoints
        self.autocast_dtype = autocast_dtype
        self.tied = model.cfg.tie_embeddings
        self._schedule = None
        self._keys = list(model.state_dict())  # GPT's state-dict order, for the merged full state dict
        parts = set(cfg.strategy.split("+"))
        self.kind = "single" if ctx.mesh is None else "pp" if ctx.pp > 1 else "fsdp" if "fsdp" in parts else (
            "ddp" if "ddp" in parts and ctx.dp > 1 else "plain"
        )
        apply_activation_checkpointing(model, cfg.activation_checkpointing)
        self.module: nn.Module = model
        self.wrapped: nn.Module = model
        if self.kind == "pp":
            self.module = self.wrapped = GPTStage(model, ctx.pp_rank, ctx.pp)
            # Free what other stages own: a stage holds 1/pp of the blocks' weights, not all of them.
            mine = {id(p) for p in self.module.parameters()}
            for part in (model.wte, model.wpe, model.ln_f, model.lm_head, *model.blocks):
                if not any(id(p) in mine for p in part.parameters()):
                    part.to("meta")
            if cfg.compile:
                # The pipeline schedule runs the stage module itself; compiling it is not supported here.
                log.warning("train.compile is ignored under pipeline parallelism")
            return
        if ctx.tp > 1:
            apply_tensor_parallel(model, ctx.mesh["tp"])
        if self.kind == "fsdp":
            apply_fsdp(model, ctx.mesh["dp"])
        elif self.kind == "ddp":
            # DDP all-reduces (averages) gradients in buckets during backward; gloo on CPU, NCCL on GPU.
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(model, device_ids=device_ids, process_group=ctx.group("dp"))
        if cfg.compile:
            # Compiled from outside, around the wrapper, so DDP's bucketed all-reduce and FSDP's hooks stay
            # in charge of communication; the weights remain those of `model` (state dicts are unchanged).
            self.wrapped = torch.compile(self.wrapped)

    @property
    def distributed_checkpoint(self) -> bool:
        """Whether checkpoints hold this run's model and optimizer state as per-rank DCP shards
        (fsdp, tp, fsdp+tp) rather than gathered into full files (pipeline stages are merged instead)."""
        return self.sharded and self.kind != "pp" and not self.gathered_checkpoints

    @property
    def sharded(self) -> bool:
        """Whether parameters or optimizer state are split across ranks (no plain optimizer state dict)."""
        return self.kind in ("fsdp", "pp") or self.ctx.tp > 1

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype)

    def forward_backward(self, micro_batches: list[Batch], scaler: torch.amp.GradScaler | None = None,
                         weights: list[float] | None = None) -> torch.Tensor:
        """Forward and backward over this rank's micro-batches of one optimizer step, leaving the
        gradients of the mean loss (synced across data-parallel ranks) in `.grad`.

        `weights`: each micro-batch's share of the loss (default 1/n each). A fine-tune passes
        dp x (its trained tokens) / (the global batch's), so that after data-parallel averaging the
        gradient is that of the mean over every trained token, however unevenly they fall.
        Returns the weighted sum of the micro-batches' losses (zero on pipeline stages other than the
        last); summed over data-parallel ranks and divided by their number, it is the step's loss.
        """
        if self.kind == "pp":
            if weights is not None or any(len(batch) > 2 for batch in micro_batches):
                raise ValueError("pipeline stages take plain (inputs, targets) micro-batches of equal weight")
            return self._pipeline_step(micro_batches)
        n = len(micro_batches)
        if weights is None:
            weights = [1.0 / n] * n  # equal-sized micro-batches: the mean of their means is the batch's mean
        loss_sum = torch.zeros((), device=self.ctx.device)
        for i, batch in enumerate(micro_batches):
            last = i == n - 1
            sync: contextlib.AbstractContextManager = contextlib.nullcontext()
            if self.kind == "ddp" and not last:
                sync = self.wrapped.no_sync()  # one all-reduce per optimizer step, not per micro-batch
            elif self.kind == "fsdp":
                self.model.set_requires_gradient_sync(last)
            with sync:
                with self._autocast():
                    _, loss = self.wrapped(*batch)
                scaled = loss * weights[i]
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            loss_sum += scaled.detach()
        return loss_sum

    def _pipeline_step(self, micro_batches: list[Batch]) -> torch.Tensor:
        if self._schedule is None:
            self._schedule = build_schedule(self.module, self.ctx, len(micro_batches), self.cfg.pipeline_schedule)
        inputs = torch.cat([x for x, _ in micro_batches])
        targets = torch.cat([y for _, y in micro_batches])
        losses: list[torch.Tensor] = []
        args = (inputs,) if self.ctx.is_first_stage else ()
        target = targets if self.ctx.is_last_stage else None
        with self._autocast():
            self._schedule.step(*args, target=target, losses=losses, return_outputs=False)
        sum_tied_grads(self.module, self.ctx, self.model.wte.weight.shape, self.tied)
        average_over_data_parallel([p for p in self.module.parameters()], self.ctx)
        if not losses:
            return torch.zeros((), device=self.ctx.device)
        return torch.stack([loss.detach().float() for loss in losses]).mean()

    def grad_norm(self) -> torch.Tensor:
        """Global gradient norm of the whole model (equal to the unsharded model's)."""
        exclude = frozenset()
        if self.kind == "pp" and self.tied and self.module.last and not self.module.first:
            exclude = frozenset({id(tied_weights(self.module, self.tied))})
        return global_grad_norm(self.module.parameters(), self.ctx, exclude)

    def logits(self, inputs: torch.Tensor, positions: torch.Tensor | None = None,
               segments: torch.Tensor | None = None) -> torch.Tensor | None:
        """Inference forward (no grad) of one batch: logits on ranks that hold them, else None.
        `positions` and `segments`: packed examples, as `GPT.forward` takes them (not under pp)."""
        with torch.no_grad(), self._autocast():
            if self.kind == "pp":
                if segments is not None:
                    raise ValueError("pipeline stages do not take packed examples")
                return pipeline_forward(self.module, inputs, self.ctx, self.model.cfg.hidden_size)
            logits, _ = self.module(inputs, None, positions, segments)
            return logits

    def full_state_dict(self, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The whole GPT's state dict on CPU, in GPT's layout. Collective: call on every rank.

        `state`: a copy of this rank's `model.state_dict()` to gather instead of the live weights (not pp).
        """
        import torch.distributed as dist

        if self.kind != "pp":
            return full_state_dict(self.model if state is None else state, self.ctx.tp)
        parts: list[dict[str, torch.Tensor] | None] = [None] * self.ctx.pp
        dist.all_gather_object(parts, full_state_dict(self.module), group=self.ctx.group("pp"))
        merged: dict[str, torch.Tensor] = {}
        for part in parts:
            merged.update(part or {})
        if self.tied:  # each end holds one name of the shared matrix
            merged.setdefault("lm_head.weight", merged.get("wte.weight"))
            merged.setdefault("wte.weight", merged.get("lm_head.weight"))
        # GPT's key order, so the file reads like one written by an unsplit model.
        return {k: merged[k] for k in self._keys}
