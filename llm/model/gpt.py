"""A decoder-only transformer in the GPT-2 mould, small enough to read in one sitting.

Token + learned position embeddings, pre-norm blocks (LayerNorm -> causal self-attention, LayerNorm ->
GELU MLP), a final LayerNorm and an output projection optionally tied to the token embedding.

Positions are learned (GPT-2) rather than rotary: the model only ever runs at the context length it
was trained with, learned positions keep attention a single SDPA call over plain q/k/v (nothing for a
tensor- or pipeline-parallel wrapper to special-case), and GPT-2's init and parameter accounting carry
over unchanged.

The file knows nothing about parallelism, checkpointing or mixed precision: `llm/train/` wraps it
from the outside. Blocks live in `GPT.blocks` (an `nn.ModuleList`) so wrappers can address them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from llm.config import ModelConfig


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t only sees positions <= t."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_size = cfg.hidden_size // cfg.attention_heads
        self.dropout = cfg.dropout
        # q, k and v in one matmul: one (d, 3d) weight instead of three (d, d).
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.bias)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of `x` (B, T, d), each (B, heads, T, head_size)."""
        batch, seq, _ = x.shape
        # Heads are counted from the width qkv returns, not from the config: a tensor-parallel wrapper
        # may hand this module a shard holding only some of the heads.
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return tuple(t.view(batch, seq, -1, self.head_size).transpose(1, 2) for t in (q, k, v))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of q over k/v, then the output projection: (B, heads, T, Q) -> (B, T, d).
        `mask` (B, 1, T, S) boolean, True where a query may look; None is plain causal attention."""
        dropout = self.dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        batch, _, seq, _ = q.shape
        y = y.transpose(1, 2).contiguous().view(batch, seq, -1)
        return self.resid_dropout(self.proj(y))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.heads(x)
        return self.attend(q, k, v, mask)


class MLP(nn.Module):
    """Position-wise feed-forward: d -> mlp_ratio*d -> d with a GELU in between."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = mlp_hidden_size(cfg)
        self.fc = nn.Linear(cfg.hidden_size, hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.hidden_size, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.hidden_size, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.hidden_size, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # In fp32 even under bf16 autocast: log-softmax over a large vocab loses digits in bf16.
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def packed_attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """Causal attention that stays inside each packed example: (B, T) example ids -> (B, 1, T, T)
    boolean, True where query t may attend to key s (s <= t and the same example)."""
    seq = segments.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]
    return (same & causal)[:, None]


def mlp_hidden_size(cfg: ModelConfig) -> int:
    """Width of the MLP's inner layer (at least 1)."""
    return max(1, int(round(cfg.mlp_ratio * cfg.hidden_size)))


class GPT(nn.Module):
    """The language model: token ids (B, T) -> next-token logits (B, T, vocab)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set (take it from the tokenizer) before building GPT")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.wpe = nn.Embedding(cfg.context_length, cfg.hidden_size)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden_size, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            # Press & Wolf 2017: one matrix for reading and writing tokens; saves vocab*d parameters.
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2: each block adds two residual branches, so their output projections start 1/sqrt(2L)
        # smaller to keep the residual stream's variance independent of depth.
        residual_std = 0.02 / math.sqrt(2 * cfg.layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position and, given targets (B, T; -100 = ignore), the mean cross-entropy.

        Several examples packed into one row pass `segments` (B, T), an id per example (attention
        stays inside each one), and `positions` (B, T), each example's positions from 0.

        With targets of which some are -100, the logits returned are those of the other positions only,
        flattened to (N, vocab); without targets, or with a target everywhere, they are (B, T, vocab).
        """
        seq = idx.shape[1]
        if seq > self.cfg.context_length:
            raise ValueError(f"sequence of {seq} tokens is longer than context_length {self.cfg.context_length}")
        pos = torch.arange(seq, device=idx.device) if positions is None else positions
        x = self.drop(self.wte(idx) + self.wpe(pos))
        mask = None if segments is None else packed_attention_mask(segments)
        for block in self.blocks:
            x = block(x, mask)
        h = self.ln_f(x)
        if targets is None:
            return self.lm_head(h), None
        trained = targets != -100
        if bool(trained.all()):
            logits = self.lm_head(h)
            return logits, _cross_entropy(logits, targets)
        # Some positions have no target (a fine-tune's prompt tokens, padding): the output projection and
        # the softmax, the largest matmul and the widest activation, run only where a target is. The loss
        # and every gradient are those of the full computation; the logits are those positions' (N, vocab).
        logits = self.lm_head(h[trained])
        if not logits.shape[0]:  # nothing to learn from: a zero loss that still reaches every parameter
            return logits, logits.sum() * 0.0
        return logits, _cross_entropy(logits, targets[trained])

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameters, each shared tensor once. `exclude_embeddings`: without the token and position
        tables (and so without a tied output projection), the "non-embedding" count of Kaplan et al."""
        seen: dict[int, nn.Parameter] = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            seen.pop(id(self.wte.weight), None)
            seen.pop(id(self.wpe.weight), None)
        return sum(p.numel() for p in seen.values())

    def flops_per_token(self) -> int:
        """Training FLOPs per token (forward + backward) at full context: 6N + 12*L*H*Q*T.

        N counts the weights that take part in a matmul: the non-embedding parameters plus the output
        projection (vocab x d, tied or not); embedding lookups cost no FLOPs. 12*L*H*Q*T is attention's
        QK^T and AV (PaLM appendix B), H heads of size Q over T positions. Used for MFU.
        """
        cfg = self.cfg
        n = self.num_params(exclude_embeddings=True)
        if cfg.tie_embeddings:
            n += self.lm_head.weight.numel()
        head_size = cfg.hidden_size // cfg.attention_heads
        return 6 * n + 12 * cfg.layers * cfg.attention_heads * head_size * cfg.context_length

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append `max_new_tokens` sampled tokens to each row of `idx` (B, T) and return (B, T+new).

        temperature 0 picks the most likely token; top_k (None or 0 = all) samples among the k most
        likely. Pass a seeded `generator` for reproducible samples.
        """
        for _ in range(max_new_tokens):
            context = idx[:, -self.cfg.context_length :]
            logits, _ = self(context)
            logits = logits[:, -1, :].float()
            if temperature <= 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, next_id), dim=1)
        return idx
