"""Gradient checks shared by the fine-tuning method tests."""

from __future__ import annotations

import torch
import torch.nn as nn


def assert_grads_only_on_trainable(model: nn.Module) -> None:
    """Every trainable parameter got a non-zero gradient and every frozen one none at all."""
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def one_adamw_step(model: nn.Module, idx: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Parameters before and after one AdamW step (lr 1e-2, no decay) on next-token loss of `idx`."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    _, loss = model(idx, idx)
    loss.backward()
    opt.step()
    return before, {n: p.detach() for n, p in model.named_parameters()}
