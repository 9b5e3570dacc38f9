"""Sampled continuations of text prompts from a trained model."""

from __future__ import annotations

import torch

from llm.model.gpt import GPT
from llm.tokenizer.base import Tokenizer


def sample_completions(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    seed: int = 0,
) -> list[dict[str, str]]:
    """One completion per prompt as `{"prompt", "completion"}`; the same seed gives the same text.

    Each prompt starts with the begin-of-document token, as documents did in training; the completion
    stops at the first end-of-document token.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    samples = []
    try:
        for prompt in prompts:
            ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
            new = continuation_ids(model, ids, max_new_tokens, temperature, top_k, generator, {tokenizer.eos_id})
            samples.append({"prompt": prompt, "completion": tokenizer.decode(new)})
    finally:
        model.train(was_training)
    return samples


def continuation_ids(model: GPT, ids: list[int], max_new_tokens: int, temperature: float, top_k: int,
                     generator: torch.Generator, stop_ids: set[int]) -> list[int]:
    """The ids `model` samples after `ids`, cut before the first of `stop_ids`."""
    device = next(model.parameters()).device
    # Keep the prompt's tail when it is longer than the model's context.
    ids = ids[-model.cfg.context_length :]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k or None, generator=generator)
    new = out[0, len(ids) :].tolist()
    stops = [new.index(s) for s in stop_ids if s in new]
    return new[: min(stops)] if stops else new
