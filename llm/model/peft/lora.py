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
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        if self.training and isinstance(self.dropout, nn.Dropout):
            # Dropout reaches only the update's input, so the update stays a separate branch.
            out = F.linear(x, self.weight, self.bias)
            return out + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling
        return lora_linear(x, self.weight, self.bias, self.lora_A, self.lora_B, self.scaling)

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


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """`x @ (weight + scaling * B @ A)^T + bias`, with gradients for x, A, B (and weight or bias only
    where they require one).

    The same function as the two-branch form `linear(x) + scaling * x @ A^T @ B^T`, computed with one
    full-width matmul each way instead of one plus two thin ones and the adds between them: the rank-r
    products are bound by memory bandwidth, so at small rank the separate branch costs far more than its
    FLOPs. The merged weight is rebuilt in backward rather than saved (out x in x r multiply-adds, well
    under 1% of the layer's), so the saved activations are only `x`, as for a plain Linear.
    Under autocast every operand is cast to the autocast type first, as `F.linear` would be.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight, lora_a, lora_b = (t.to(dtype) for t in (x, weight, lora_a, lora_b))
        bias = bias.to(dtype) if bias is not None else None
        with torch.autocast(device_type, enabled=False):
            return _MergedLoRA.apply(x, weight, bias, lora_a, lora_b, scaling)
    return _MergedLoRA.apply(x, weight, bias, lora_a, lora_b, scaling)


class _MergedLoRA(torch.autograd.Function):
    """Autograd for `lora_linear`: y = x W'^T + b with W' = W + s B A.

    dL/dx = g W', dL/dB = s g^T (x A^T), dL/dA = s (g B)^T x: never the (out, in) weight gradient of
    the frozen base, which is what full fine-tuning pays for.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling):
        merged = torch.addmm(weight, lora_b, lora_a, alpha=scaling)
        ctx.save_for_backward(x, weight, lora_a, lora_b)
        ctx.scaling = scaling
        ctx.has_bias = bias is not None
        return F.linear(x, merged, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, lora_a, lora_b = ctx.saved_tensors
        s = ctx.scaling
        need_x, need_w, need_bias, need_a, need_b, _ = ctx.needs_input_grad
        g = grad_out.reshape(-1, grad_out.shape[-1])
        x2 = x.reshape(-1, x.shape[-1])
        grad_x = grad_w = grad_bias = grad_a = grad_b = None
        if need_x:
            merged = torch.addmm(weight, lora_b, lora_a, alpha=s)
            grad_x = (g @ merged).view(x.shape)
        # The thin products keep the token dimension last, (r, N): BLAS runs the rank-r GEMMs two to
        # five times faster that way round than with (N, r) operands or g transposed (measured on CPU).
        if need_a:
            grad_a = (lora_b.t() @ g.t()) @ x2
            grad_a.mul_(s)
        if need_b:
            grad_b = ((lora_a @ x2.t()) @ g).t().contiguous()
            grad_b.mul_(s)
        if need_w:
            grad_w = g.t() @ x2
        if need_bias and ctx.has_bias:
            grad_bias = g.sum(0)
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None


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
