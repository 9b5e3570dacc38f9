"""Bottleneck adapters (Houlsby et al. 2019): a small residual MLP after each attention and MLP sublayer.

Injected with forward hooks, so GPT's forward and parameter names stay as they are; each adapter is a
child module named `adapter` of the sublayer it follows (`blocks.0.attn.adapter.down.weight`). Hooks
also fire inside activation-checkpointed blocks, whose recomputation calls the sublayers again.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Adapter(nn.Module):
    """`h + up(gelu(down(h)))`, width -> width // reduction_factor -> width.

    `up` starts at zero, so a new adapter is the identity and the adapted model starts as the base
    model; gradients still reach `up` (and through it `down` once `up` moves off zero).
    """

    def __init__(self, width: int, reduction_factor: int):
        super().__init__()
        if reduction_factor < 1:
            raise ValueError(f"adapter reduction_factor must be at least 1, got {reduction_factor}")
        bottleneck = max(1, width // reduction_factor)
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


def _run_adapter(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    # A module-level function rather than a closure, so a model with adapters still pickles.
    return module.adapter(output)


def apply_adapters(model: nn.Module, reduction_factor: int = 16) -> int:
    """Add an `Adapter` after the attention and after the MLP of every block in `model.blocks`, and
    freeze everything except the adapters. Returns the number of adapters added."""
    width = model.cfg.hidden_size
    sublayers = [sub for block in model.blocks for sub in (block.attn, block.mlp)]
    if any(hasattr(sub, "adapter") for sub in sublayers):
        raise ValueError("the model already has adapters")
    for p in model.parameters():
        p.requires_grad_(False)
    for sub in sublayers:
        ref = next(sub.parameters())
        sub.adapter = Adapter(width, reduction_factor).to(device=ref.device, dtype=ref.dtype)
        sub.register_forward_hook(_run_adapter)
    return len(sublayers)
