"""The two models of a rating session: where each comes from, its tokenizer, and its answers to prompts.

A model is a checkpoint folder (pretraining, fine-tune, or an export of one) or a registered model
`models:/NAME/VERSION` / `models:/NAME@ALIAS`, fetched once into a checkpoint folder under the session's
work directory. A fine-tune (its `state.json` carries the fine-tune's config) answers through its chat
template; any other model continues the prompt as text, the way the evaluate stage samples it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import torch

from llm import storage
from llm.config import ChatTemplateConfig
from llm.errors import InputNotFound, UserError
from llm.train.checkpoint import MODEL_FILE, STATE_FILE, checkpoint_tokenizer, load_checkpoint_tokenizer, read_state


@dataclass(frozen=True)
class RatedModel:
    """One side of a comparison: what the user named (`ref`), the checkpoint folder it resolved to, a
    digest that changes whenever its weights do, and a short label for folder and run names."""

    ref: str
    checkpoint: str
    digest: str
    label: str


def resolve_model(ref: str, setting: str, tracking_uri: str, fetch_root: str) -> RatedModel:
    """The checkpoint folder behind `ref` (`setting` names it in errors: MODEL_A, MODEL_B); a registered
    model is written once under `fetch_root/NAME-vVERSION` (the same version is fetched only once)."""
    from llm.finetune.base import fetch_registered, is_registered, registered_version

    if is_registered(ref):
        name, version = registered_version(ref, tracking_uri, setting)
        folder = fetch_registered(f"models:/{name}/{version}", tracking_uri,
                                  storage.join(fetch_root, f"{_slug(name)}-v{version}"), setting)
        return RatedModel(ref, folder, f"models:/{name}/{version}", f"{_slug(name)}-v{version}")
    folder = storage.absolute(ref)
    if not storage.exists(storage.join(folder, STATE_FILE)):
        raise InputNotFound(f"{setting} {ref}: not a checkpoint folder (no {STATE_FILE}) nor a registered model "
                            "(models:/NAME/VERSION or models:/NAME@ALIAS)")
    state = read_state(folder)
    weights = storage.join(folder, state.get("weights_file", MODEL_FILE))
    if not storage.exists(weights):
        raise InputNotFound(f"{setting} {ref}: the checkpoint has no {state.get('weights_file', MODEL_FILE)}")
    digest = hashlib.sha256(storage.read_bytes(weights)).hexdigest()
    # An adapter's outputs depend on its base too, which `state.json` names by digest.
    digest = hashlib.sha256((digest + str(state.get("finetune", {}).get("base_digest", ""))).encode()).hexdigest()
    parts = [p for p in folder.rstrip("/").split("/") if p][-2:]
    return RatedModel(ref, folder, digest, _slug("-".join(parts)))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40] or "model"


def chat_template(state: dict[str, Any]) -> ChatTemplateConfig | None:
    """The chat template a fine-tune was trained with (None for a model that was not fine-tuned here)."""
    config = state.get("finetune", {}).get("config") if isinstance(state.get("finetune"), dict) else None
    if not isinstance(config, dict) or "template" not in config:
        return None
    return ChatTemplateConfig.model_validate(config["template"])


@dataclass(frozen=True)
class Decoding:
    """How answers are sampled: the same for both models, so only the models differ."""

    max_new_tokens: int
    temperature: float
    top_k: int
    seed: int


def generate_answers(model: RatedModel, prompts: list[str], decoding: Decoding, tokenizer_override: str | None,
                     setting: str, device: str | None = None) -> list[str]:
    """`model`'s answer to each prompt. Prompt i samples from its own generator seeded by (seed, i), so an
    answer does not depend on which prompts came before it. `device`: None takes a GPU when one is visible
    (the answers are cached per session, so a rerun elsewhere does not change them)."""
    from llm.eval.generate import continuation_ids
    from llm.finetune.respond import prompt_ids
    from llm.finetune.sft_data import template_ids
    from llm.train.checkpoint import load_model

    state = read_state(model.checkpoint)
    tokenizer, tokenizer_uri = load_checkpoint_tokenizer(state, tokenizer_override, setting)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net, state = load_model(model.checkpoint, device)
    if tokenizer.vocab_size > net.cfg.vocab_size:
        raise UserError(f"{setting}: the tokenizer {tokenizer_uri} has {tokenizer.vocab_size} tokens, more than the "
                        f"model's vocabulary of {net.cfg.vocab_size}: pass the tokenizer it was trained with")
    template = chat_template(state)
    stops = {tokenizer.eos_id}
    if template is not None:
        stops.add(template_ids(template, tokenizer).end)
    answers = []
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            ids = prompt_ids(prompt, template, tokenizer) if template else [tokenizer.bos_id, *tokenizer.encode(prompt)]
            generator = torch.Generator(device=device).manual_seed(decoding.seed * 1_000_003 + i)
            new = continuation_ids(net, ids, decoding.max_new_tokens, decoding.temperature, decoding.top_k,
                                   generator, stops)
            answers.append(tokenizer.decode(new))
    return answers
