"""The project's `GPT` in the layout of transformers' `GPT2LMHeadModel`: its `config.json` and weights.

The two models compute the same function: learned positions, pre-norm blocks with LayerNorm (eps 1e-5),
q/k/v from one projection split in that order, attention scaled by 1/sqrt(head size), an MLP with the
exact (erf) GELU, a final LayerNorm and an output projection tied to the token embedding or not. What
differs is only the storage: GPT-2's linear layers are `Conv1D`, whose weight is (in, out), the
transpose of `nn.Linear`'s; and GPT-2 always has biases, so a model without them gets zeros there.
"""

from __future__ import annotations

from typing import Any

import torch

from llm.config import ModelConfig
from llm.errors import UserError
from llm.model.gpt import mlp_hidden_size

#: The `ModelConfig` fields the mapping below expresses. A checkpoint whose model config holds any other
#: setting (a field added later: rotary positions, another norm, ...) is refused rather than exported as
#: a model that would compute something else.
MAPPED_FIELDS = frozenset({"layers", "hidden_size", "attention_heads", "vocab_size", "context_length", "mlp_ratio",
                           "dropout", "bias", "tie_embeddings"})
#: nn.LayerNorm's default, which `GPT` uses everywhere.
LAYER_NORM_EPS = 1e-5
#: Project parameter names inside block i -> GPT-2's, and whether the weight is a Conv1D (stored transposed).
BLOCK_NAMES = {
    "ln1": ("ln_1", False), "attn.qkv": ("attn.c_attn", True), "attn.proj": ("attn.c_proj", True),
    "ln2": ("ln_2", False), "mlp.fc": ("mlp.c_fc", True), "mlp.proj": ("mlp.c_proj", True),
}
#: The project's LoRA target names (the last component of a Linear's name) -> GPT-2's module names.
LORA_TARGETS = {"qkv": "c_attn", "proj": "c_proj", "fc": "c_fc"}


def check_expressible(model_config: dict[str, Any]) -> ModelConfig:
    """The checkpoint's model config when GPT-2 can express every setting of it, else a UserError naming
    the setting."""
    unknown = sorted(set(model_config) - MAPPED_FIELDS)
    if unknown:
        raise UserError(f"model.{unknown[0]} has no GPT-2 equivalent (a transformers GPT2LMHeadModel cannot compute "
                        f"this model: settings {', '.join('model.' + k for k in unknown)})")
    cfg = ModelConfig.model_validate(model_config)
    if cfg.vocab_size is None:
        raise UserError("the checkpoint's model_config has no vocab_size: not a trained model")
    return cfg


def gpt2_config(cfg: ModelConfig, bos_id: int, eos_id: int, pad_id: int, dtype: torch.dtype) -> dict[str, Any]:
    """`config.json` of the `GPT2LMHeadModel` that computes what `GPT(cfg)` does."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_embd": cfg.hidden_size,
        "n_layer": cfg.layers,
        "n_head": cfg.attention_heads,
        "n_inner": mlp_hidden_size(cfg),
        "activation_function": "gelu",  # F.gelu's default: exact erf, not GPT-2's tanh "gelu_new"
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "initializer_range": 0.02,
        "scale_attn_weights": True,  # SDPA's default scale, 1/sqrt(head size)
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "use_cache": True,
        "dtype": str(dtype).removeprefix("torch."),
    }


def gpt2_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A plain `GPT` state dict as `GPT2LMHeadModel`'s (contiguous tensors, none shared). Raises
    ValueError naming any entry the mapping does not use (a prefix or adapter module's weights)."""
    left = dict(state)

    def take(name: str, transpose: bool = False) -> torch.Tensor:
        t = left.pop(name)
        return (t.t() if transpose else t).contiguous().clone()

    def bias(name: str, width: int, like: torch.Tensor) -> torch.Tensor:
        return take(name) if name in left else torch.zeros(width, dtype=like.dtype)

    out = {"transformer.wte.weight": take("wte.weight"), "transformer.wpe.weight": take("wpe.weight")}
    for i in range(cfg.layers):
        for ours, (theirs, conv1d) in BLOCK_NAMES.items():
            weight = take(f"blocks.{i}.{ours}.weight", transpose=conv1d)
            out[f"transformer.h.{i}.{theirs}.weight"] = weight
            out[f"transformer.h.{i}.{theirs}.bias"] = bias(f"blocks.{i}.{ours}.bias", weight.shape[-1], weight)
    out["transformer.ln_f.weight"] = take("ln_f.weight")
    out["transformer.ln_f.bias"] = bias("ln_f.bias", cfg.hidden_size, out["transformer.ln_f.weight"])
    head = left.pop("lm_head.weight")
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = head.contiguous().clone()
    if left:
        raise ValueError(f"weights with no place in GPT-2: {sorted(left)}")
    return out


def gpt2_lora_targets(targets: list[str]) -> list[str]:
    """GPT-2 module names for the project's LoRA targets (`proj` is both output projections in either
    model: `c_proj` under `attn` and under `mlp`)."""
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown:
        raise UserError(f"finetune.lora.targets {unknown} have no GPT-2 module to map to")
    return sorted({LORA_TARGETS[t] for t in targets})


def gpt2_lora_state_dict(lora: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The project's `lora_A`/`lora_B` entries under PEFT's names for GPT-2. PEFT's LoRA on a Conv1D still
    keeps A (rank, in) and B (out, rank) as `nn.Linear` weights, the project's shapes, so nothing is
    transposed; q/k/v keep their order along B's rows, as in `c_attn`."""
    out = {}
    for name, tensor in lora.items():
        module, _, which = name.rpartition(".")
        if which not in ("lora_A", "lora_B"):
            raise ValueError(f"not a LoRA weight: {name}")
        out[f"base_model.model.{_gpt2_module(module)}.{which}.weight"] = tensor.contiguous().clone()
    return out


def _gpt2_module(module: str) -> str:
    parts = module.split(".")  # blocks.{i}.attn.qkv
    if len(parts) != 4 or parts[0] != "blocks" or ".".join(parts[2:]) not in BLOCK_NAMES:
        raise ValueError(f"no GPT-2 module for {module}")
    return f"transformer.h.{parts[1]}.{BLOCK_NAMES['.'.join(parts[2:])][0]}"
