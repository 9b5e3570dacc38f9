"""Parameter-efficient fine-tuning applied to a built `GPT` from the outside: LoRA, prefix tuning and
bottleneck adapters.

Each `apply_*` freezes the base model and adds a small set of trainable parameters; `peft_state_dict`
saves just those, so a fine-tune's checkpoint is a few MB next to the base checkpoint it needs. A
reparametrised prefix saves its embedding and MLP until `drop_prefix_reparam` reduces it to its keys
and values.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from llm.model.peft.adapter import Adapter, apply_adapters
from llm.model.peft.lora import LoRALinear, apply_lora, lora_linear
from llm.model.peft.prefix import PrefixKV, apply_prefix, drop_prefix_reparam

__all__ = [
    "Adapter",
    "LoRALinear",
    "PrefixKV",
    "apply_adapters",
    "apply_lora",
    "apply_prefix",
    "drop_prefix_reparam",
    "load_peft_state_dict",
    "lora_linear",
    "peft_state_dict",
    "trainable_counts",
]


def trainable_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor (a tied embedding) counted once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


def _method_param_names(model: nn.Module) -> list[str]:
    names = []
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, LoRALinear):
            names += [f"{dot}lora_A", f"{dot}lora_B"]
        elif isinstance(module, (Adapter, PrefixKV)):
            # Whatever the module holds now: a prefix's embedding and MLP, or its key and value once
            # the reparametrisation is dropped.
            names += [f"{dot}{n}" for n, _ in module.named_parameters()]
    return names


def peft_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA, prefix and adapter parameters only (detached), keyed as in `model.state_dict()`."""
    full = model.state_dict()
    return {name: full[name].detach() for name in _method_param_names(model)}


def load_peft_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `peft_state_dict` output into a model the same method was applied to. Raises ValueError
    when the keys differ (a different method, rank targets or depth), instead of loading part of it."""
    expected = set(_method_param_names(model))
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"PEFT state does not fit the model: missing {missing}, unexpected {unexpected}")
    model.load_state_dict(state, strict=False)
