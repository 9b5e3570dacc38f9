"""Low-rank adaptation (Hu et al. 2021): a frozen Linear plus a trainable update scale * B @ A.

`LoRALinear` keeps the wrapped layer's `weight` and `bias` as its own parameters (the same tensors, not
copies), so the base parameter names in the state dict do not change: a merged model with the `lora_*`
entries dropped loads straight into a plain `GPT`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Module):
    """`base(x) + (alpha / rank) * dropout(x) @ A^T @ B^T` with A (rank, in) and B (out, rank).

    A is kaiming-uniform and B zero, so a freshly wrapped layer computes exactly what the base layer
    did. `merge()` folds the update into `weight` for inference (no extra matmuls); `unmerge()` takes
    it out again to resume training.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float = 1.0, dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        # The very same Parameter objects: whatever else refers to them (an optimizer, a tied weight)
        # keeps seeing the layer's real weight.
        self.weight = base.weight
        self.bias = base.bias
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=base.weight.device, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=base.weight.device, dtype=base.weight.dtype))
        # Same init as nn.Linear's weight (the LoRA paper's choice for A).
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The update the adapter adds to `weight`: scaling * B @ A, shaped like `weight`."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        # Two thin matmuls instead of materialising the (out, in) delta on every step.
        return out + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into `weight`; the forward then costs what the base layer's did. Matches the
        unmerged forward exactly only without dropout (eval mode or dropout 0)."""
        if not self.merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of `weight` (the inverse of `merge`, up to rounding)."""
        if self.merged:
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float = 1.0,
    dropout: float = 0.0,
    targets: list[str] | tuple[str, ...] = ("qkv", "proj", "fc"),
) -> list[str]:
    """Replace, in place, every `nn.Linear` whose name's last component is in `targets` by a
    `LoRALinear`, and freeze every other parameter. Returns the qualified names that were wrapped.

    GPT's names: `qkv` and `proj` under `attn`, `fc` and `proj` under `mlp` (so "proj" takes both
    output projections), `lm_head` for the output layer. Raises ValueError naming any target that
    matched no Linear, before changing anything.
    """
    wanted = set(targets)
    matches = [
        (name, module)
        for name, module in model.named_modules()
        if name and name.rsplit(".", 1)[-1] in wanted and type(module) is nn.Linear
    ]
    unknown = wanted - {name.rsplit(".", 1)[-1] for name, _ in matches}
    if unknown:
        raise ValueError(f"LoRA targets matched no nn.Linear in the model: {sorted(unknown)}")
    tied = [name for name, module in matches if _is_shared(model, module.weight)]
    if tied:
        # Merging would silently change the other user of the weight (e.g. a tied token embedding).
        raise ValueError(f"LoRA targets with a weight shared by another module are not supported: {tied}")

    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in matches:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, rank=rank, alpha=alpha, dropout=dropout))
    return [name for name, _ in matches]


def _is_shared(model: nn.Module, param: nn.Parameter) -> bool:
    """Whether more than one module holds `param` as a direct parameter."""
    holders = sum(1 for m in model.modules() for p in m.parameters(recurse=False) if p is param)
    return holders > 1
