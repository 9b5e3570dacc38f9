"""The four fine-tuning methods as one call: which weights train, and what a run can combine them with."""

from __future__ import annotations

import logging

import torch.nn as nn

from llm.config import FinetuneConfig
from llm.errors import UserError
from llm.model.peft import apply_adapters, apply_lora, apply_prefix, trainable_counts

log = logging.getLogger(__name__)


def check_supported(ft: FinetuneConfig) -> None:
    """Refuse, before any worker starts, what the fine-tune cannot run: packed examples carry a per-example
    attention mask and position ids that pipeline stages do not pass between them, and tensor-parallel
    shards hold some heads of each layer while a prefix or an adapter holds all of them."""
    train = ft.train
    if train.pipeline_parallel > 1 or "pp" in train.strategy.split("+"):
        raise UserError(f"finetune.method {ft.method} does not run under pipeline parallelism "
                        f"(finetune.train.strategy {train.strategy}): use ddp or fsdp")
    if train.tensor_parallel > 1 or "tp" in train.strategy.split("+"):
        raise UserError(f"finetune.method {ft.method} does not run under tensor parallelism "
                        f"(finetune.train.strategy {train.strategy}): use ddp or fsdp")
    if train.resume_from:
        raise UserError("finetune.train.resume_from does not apply to a fine-tune (it starts from finetune.base, "
                        "and an interrupted fine-tune resumes by itself): leave it empty")


def apply_method(model: nn.Module, ft: FinetuneConfig) -> tuple[int, int]:
    """Make the method's parameters (and only those) trainable on a model holding the base weights;
    returns (trainable, total) parameter counts."""
    if ft.method == "lora":
        apply_lora(model, ft.lora.rank, ft.lora.alpha, ft.lora.dropout, targets=tuple(ft.lora.targets))
    elif ft.method == "prefix":
        apply_prefix(model, ft.prefix.virtual_tokens, ft.prefix.reparam_hidden)
    elif ft.method == "adapter":
        apply_adapters(model, ft.adapter.reduction_factor)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    return trainable_counts(model)
