"""AdamW with the usual no-decay groups, fused where the parameters allow it."""

from __future__ import annotations

import torch
import torch.nn as nn

from llm.config import TrainConfig


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, device: torch.device, tied_output: bool = False
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: norms, biases and embedding tables are not decayed.

    Embeddings are excluded because decay pulls rare tokens' rows towards zero between their updates;
    with tied embeddings the output projection is the same tensor and follows (`tied_output`: also
    when a pipeline stage holds the head without the embedding it is tied to).
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    if tied_output:
        embedding_ids |= {id(p) for name, p in model.named_parameters() if name == "lm_head.weight"}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embedding_ids else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel (one launch for all parameters) exists for CUDA and CPU, for plain tensors;
    # foreach (one launch per group of tensors) for DTensor parameters and elsewhere.
    from torch.distributed.tensor import DTensor

    fused = device.type in ("cuda", "cpu") and not any(isinstance(p, DTensor) for p in seen_params(model))
    return torch.optim.AdamW(
        groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused, foreach=None if fused else True
    )


def seen_params(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters, each shared tensor once."""
    return list({id(p): p for p in model.parameters() if p.requires_grad}.values())
