"""Pipeline parallelism: GPT cut into consecutive stages, run by a `torch.distributed.pipelining` schedule.

`GPTStage` keeps GPT's parameter names (blocks keep their global index), so the stages' state dicts
merge into one GPT state dict by name. With tied embeddings the first stage holds the token table and
the last the output head: the same weights, kept identical by summing their gradients across the
pipeline group after each step.
"""

from __future__ import annotations


import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from llm.errors import UserError
from llm.model.gpt import GPT
from llm.train.parallel.context import ParallelContext


def stage_layers(layers: int, stages: int, stage: int) -> range:
    """Block indices of `stage`: contiguous, as even as possible, the earlier stages one longer."""
    if stages > layers:
        raise UserError(f"train.pipeline_parallel {stages} is more than the model's {layers} layers (model.layers)")
    base, extra = divmod(layers, stages)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (1 if stage < extra else 0))


class GPTStage(nn.Module):
    """Stage `stage` of `stages`: token ids (first) or hidden states -> hidden states or logits (last)."""

    def __init__(self, model: GPT, stage: int, stages: int):
        super().__init__()
        self.first, self.last = stage == 0, stage == stages - 1
        self.context_length = model.cfg.context_length
        if self.first:
            self.wte, self.wpe, self.drop = model.wte, model.wpe, model.drop
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in stage_layers(len(model.blocks), stages, stage)})
        if self.last:
            self.ln_f, self.lm_head = model.ln_f, model.lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            pos = torch.arange(x.shape[1], device=x.device)
            x = self.drop(self.wte(x) + self.wpe(pos))
        for block in self.blocks.values():
            x = block(x)
        if self.last:
            x = self.lm_head(self.ln_f(x))
        return x


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy, in fp32 as in GPT.forward."""
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


def build_schedule(stage_module: GPTStage, ctx: ParallelContext, micro_batches: int, kind: str):
    """A GPipe or 1F1B schedule over this rank's stage; one `step` is one optimizer step's batch.

    `scale_grads=True` divides the accumulated gradients by `micro_batches` (the loss is a mean per
    micro-batch), so `step` must be called once per optimizer step with the whole batch.
    """
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    stage = PipelineStage(stage_module, ctx.pp_rank, ctx.pp, ctx.device, group=ctx.group("pp"))
    schedule_cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[kind]
    return schedule_cls(stage, n_microbatches=micro_batches, loss_fn=lm_loss, scale_grads=True)


def tied_weights(stage_module: GPTStage, tied: bool) -> nn.Parameter | None:
    """This stage's copy of the tied embedding/head matrix (None on middle stages or when untied)."""
    if not tied:
        return None
    if stage_module.first:
        return stage_module.wte.weight
    if stage_module.last:
        return stage_module.lm_head.weight
    return None


def sum_tied_grads(stage_module: GPTStage, ctx: ParallelContext, shape: torch.Size, tied: bool) -> None:
    """Sum the tied matrix's gradient of the first and last stage (middle stages add zeros), as the
    single shared tensor of the unsplit model would have accumulated it."""
    if not tied or ctx.pp == 1:
        return
    weight = tied_weights(stage_module, tied)
    grad = torch.zeros(shape, device=ctx.device) if weight is None or weight.grad is None else weight.grad
    dist.all_reduce(grad, group=ctx.group("pp"))
    if weight is not None:
        weight.grad = grad


def average_over_data_parallel(params: list[nn.Parameter], ctx: ParallelContext) -> None:
    """Average gradients over the data-parallel group in one flat all-reduce (ddp+pp: one sync per
    optimizer step, after all micro-batches)."""
    if ctx.dp == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=ctx.group("dp"))
    flat /= ctx.dp
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def pipeline_forward(
    stage_module: GPTStage, inputs: torch.Tensor, ctx: ParallelContext, hidden_size: int
) -> torch.Tensor | None:
    """Forward one batch through the pipeline with plain send/recv (no schedule): the logits on the
    last stage, None elsewhere. Used for validation, whose batch size may differ from training's (a
    schedule's stage buffers keep the shapes of its first step). Hidden states travel in fp32, the
    residual stream's dtype even under autocast."""
    group = ctx.group("pp")
    if ctx.is_first_stage:
        x = inputs
    else:
        x = torch.empty(inputs.shape[0], inputs.shape[1], hidden_size, device=ctx.device, dtype=torch.float32)
        dist.recv(x, group=group, group_src=ctx.pp_rank - 1)
    out = stage_module(x)
    if ctx.is_last_stage:
        return out
    dist.send(out.float().contiguous(), group=group, group_dst=ctx.pp_rank + 1)
    return None
