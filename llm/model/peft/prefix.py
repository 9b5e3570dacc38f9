"""Prefix tuning (Li & Liang 2021): P trainable keys and values in front of every layer's attention.

Each query of every layer may attend to the P "virtual tokens" of that layer before the real keys; the
base model stays frozen. The prefix is a child module named `prefix` of each block's `attn`
(`blocks.0.attn.prefix.key`), and `attn.forward` is replaced on the instance (the class is untouched),
the way activation checkpointing replaces `block.forward`, so `gpt.py` knows nothing of it.

The prefix has no position: its keys are free parameters, so it takes none of the context length and
sits in front of every packed example of a row alike.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

# GPT's init scale (GPT._init_weights). Keys this small give each prefix slot an attention score near
# 0 and values this small add almost nothing, so the tuned model starts close to the base model: a
# fresh prefix only takes a share of the softmax mass. (No prefix is an exact identity: a slot would
# need a key scoring -inf.)
INIT_STD = 0.02


class PrefixKV(nn.Module):
    """One layer's prefix: keys and values of shape (heads, P, head_size) each, from `forward()`.

    `reparam_hidden` 0 trains `key` and `value` directly. Above 0 (the paper's reparametrisation, which
    it found trains more stably) they are produced on each forward from an `embedding` (P, d) by an MLP
    d -> reparam_hidden -> 2d with a tanh; `drop_reparam()` computes them once and keeps only them.
    """

    def __init__(self, heads: int, head_size: int, virtual_tokens: int, reparam_hidden: int = 0):
        super().__init__()
        if virtual_tokens < 1:
            raise ValueError(f"prefix virtual_tokens must be at least 1, got {virtual_tokens}")
        if reparam_hidden < 0:
            raise ValueError(f"prefix reparam_hidden must be 0 or more, got {reparam_hidden}")
        self.heads = heads
        self.head_size = head_size
        self.virtual_tokens = virtual_tokens
        self.reparam_hidden = reparam_hidden
        width = heads * head_size
        if reparam_hidden == 0:
            self.key = nn.Parameter(torch.randn(heads, virtual_tokens, head_size) * INIT_STD)
            self.value = nn.Parameter(torch.randn(heads, virtual_tokens, head_size) * INIT_STD)
            return
        # One MLP per layer, not one shared across layers: everything a block needs then lives inside
        # the block, so per-block FSDP sharding and activation checkpointing treat it like any other
        # block parameter (a shared module would be gathered and recomputed outside every block).
        # The embedding is unit scale, like the LayerNorm outputs real tokens enter attention with;
        # the first layer keeps the tanh in its responsive range; the last is scaled so the keys and
        # values start at about INIT_STD, as without the MLP.
        self.embedding = nn.Parameter(torch.randn(virtual_tokens, width))
        self.mlp = nn.Sequential(nn.Linear(width, reparam_hidden), nn.Tanh(), nn.Linear(reparam_hidden, 2 * width))
        nn.init.normal_(self.mlp[0].weight, std=1.0 / math.sqrt(width))
        nn.init.zeros_(self.mlp[0].bias)
        nn.init.normal_(self.mlp[2].weight, std=INIT_STD / math.sqrt(reparam_hidden))
        nn.init.zeros_(self.mlp[2].bias)

    @property
    def reparameterized(self) -> bool:
        """Whether the keys and values still come from the MLP (False after `drop_reparam`)."""
        return hasattr(self, "mlp")

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(key, value), each (heads, P, head_size)."""
        if not self.reparameterized:
            return self.key, self.value
        key, value = self.mlp(self.embedding).chunk(2, dim=-1)
        return tuple(t.view(self.virtual_tokens, self.heads, self.head_size).transpose(0, 1) for t in (key, value))

    @torch.no_grad()
    def drop_reparam(self) -> None:
        """Replace the MLP and embedding by the keys and values they produce now, as plain `key` and
        `value` Parameters (trainable if the embedding was). The forward is unchanged; an optimizer
        built over the old parameters must be rebuilt. No-op without reparametrisation."""
        if not self.reparameterized:
            return
        trainable = self.embedding.requires_grad
        key, value = self.forward()
        del self.mlp, self.embedding
        self.key = nn.Parameter(key.contiguous().clone(), requires_grad=trainable)
        self.value = nn.Parameter(value.contiguous().clone(), requires_grad=trainable)

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, virtual_tokens={self.virtual_tokens}, head_size={self.head_size}, "
            f"reparam_hidden={self.reparam_hidden if self.reparameterized else 0}"
        )


def prefix_mask(mask: torch.Tensor | None, seq: int, virtual_tokens: int, device: torch.device) -> torch.Tensor:
    """The attention mask over [prefix; keys]: every query sees all P prefix columns, then what `mask`
    allowed. `mask` None (plain causal) gives (1, 1, T, P+T); a packed (B, 1, T, T) gives (B, 1, T, P+T),
    so every example of a packed row sees the prefix."""
    if mask is None:
        # Explicit, not is_causal: SDPA aligns is_causal to the top-left corner, so with P extra key
        # columns query t would see only columns 0..t: part of the prefix and not its own last P tokens.
        allowed = torch.ones(seq, virtual_tokens + seq, dtype=torch.bool, device=device)
        return allowed.tril(diagonal=virtual_tokens)[None, None]
    return torch.cat((mask.new_ones(*mask.shape[:-1], virtual_tokens), mask), dim=-1)


def _prefixed_attention(attn: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    # A module-level function bound with functools.partial rather than a closure, so a prefixed model
    # still pickles and deep-copies.
    q, k, v = attn.heads(x)
    key, value = attn.prefix()
    batch = x.shape[0]
    # Cast to k's dtype: under bf16 autocast k is bf16 while the prefix parameters stay fp32.
    key = key.to(dtype=k.dtype, device=k.device).unsqueeze(0).expand(batch, -1, -1, -1)
    value = value.to(dtype=v.dtype, device=v.device).unsqueeze(0).expand(batch, -1, -1, -1)
    k = torch.cat((key, k), dim=2)
    v = torch.cat((value, v), dim=2)
    return attn.attend(q, k, v, prefix_mask(mask, q.shape[2], attn.prefix.virtual_tokens, q.device))


def apply_prefix(model: nn.Module, virtual_tokens: int, reparam_hidden: int = 0) -> int:
    """Freeze every parameter of `model` (a GPT), give each block's attention a `PrefixKV` of
    `virtual_tokens` keys and values (through an MLP of width `reparam_hidden` when above 0), and route
    its forward through the prefix. Returns the number of layers prefixed.

    Apply before activation checkpointing and FSDP (the prefix is then part of each block). Not for
    tensor parallelism: the prefix holds all heads while a shard's attention computes only some.
    """
    # Checked here too, not only in PrefixKV, so a bad value fails before anything is frozen.
    if virtual_tokens < 1:
        raise ValueError(f"prefix virtual_tokens must be at least 1, got {virtual_tokens}")
    if reparam_hidden < 0:
        raise ValueError(f"prefix reparam_hidden must be 0 or more, got {reparam_hidden}")
    attns = [block.attn for block in model.blocks]
    if any(hasattr(attn, "prefix") for attn in attns):
        raise ValueError("the model already has a prefix")
    for p in model.parameters():
        p.requires_grad_(False)
    heads = model.cfg.attention_heads
    for attn in attns:
        ref = attn.qkv.weight
        prefix = PrefixKV(heads, attn.head_size, virtual_tokens, reparam_hidden)
        attn.prefix = prefix.to(device=ref.device, dtype=ref.dtype)
        attn.forward = functools.partial(_prefixed_attention, attn)
    return len(attns)


def drop_prefix_reparam(model: nn.Module) -> int:
    """`PrefixKV.drop_reparam` on every prefix of `model` (after training, to keep and serve only the
    keys and values). Returns the number of prefixes that had an MLP."""
    prefixes = [m for m in model.modules() if isinstance(m, PrefixKV) and m.reparameterized]
    for prefix in prefixes:
        prefix.drop_reparam()
    return len(prefixes)
