"""Responses of a model to prompts through the chat template: what a fine-tune's before/after samples show."""

from __future__ import annotations

import torch

from llm.config import ChatTemplateConfig
from llm.finetune.sft_data import template_ids
from llm.model.gpt import GPT


def prompt_ids(prompt: str, template: ChatTemplateConfig, tokenizer) -> list[int]:
    """The template's tokens up to where the assistant's answer starts: [bos] [system] user prompt end assistant."""
    marks = template_ids(template, tokenizer)
    ids = [marks.bos] if marks.bos is not None else []
    if template.default_system:
        ids += [marks.roles["system"], *tokenizer.encode(template.default_system), marks.end]
    return ids + [marks.roles["user"], *tokenizer.encode(prompt), marks.end, marks.roles["assistant"]]


@torch.no_grad()
def respond(model: GPT, tokenizer, template: ChatTemplateConfig, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy responses to `prompts`, each cut at the end marker (or after `max_new_tokens`)."""
    end = template_ids(template, tokenizer).end
    was_training = model.training
    model.eval()
    out = []
    try:
        for prompt in prompts:
            ids = prompt_ids(prompt, template, tokenizer)[-(model.cfg.context_length - 1):]
            new: list[int] = []
            for _ in range(max_new_tokens):
                context = torch.tensor([(ids + new)[-model.cfg.context_length:]], dtype=torch.long)
                logits, _ = model(context)
                token = int(logits[0, -1].argmax())
                if token == end:
                    break
                new.append(token)
            out.append(tokenizer.decode(new))
    finally:
        model.train(was_training)
    return out
