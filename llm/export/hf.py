"""A checkpoint as a Hugging Face transformers folder: `GPT2LMHeadModel` weights, config and tokenizer.

`hf`: a pretraining, full fine-tune or LoRA checkpoint (LoRA merged into the weights) as one folder that
`AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load offline.
`peft`: a LoRA checkpoint as a PEFT adapter folder (`adapter_config.json`, `adapter_model.safetensors`)
with its base, exported the same way, in `base/` inside it:
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(OUT/base), OUT)`.

Prefix-tuning and bottleneck-adapter checkpoints are refused: their modules add computation that GPT-2
does not have.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from llm import storage
from llm.config import FinetuneConfig, ModelConfig
from llm.errors import UserError
from llm.export.gpt2 import (check_expressible, gpt2_config, gpt2_lora_state_dict, gpt2_lora_targets,
                             gpt2_state_dict)
from llm.export.hf_tokenizer import tokenizer_files
from llm.finetune.export import is_adapter_checkpoint, load_finetuned, merged_state_dict, write_export_folder
from llm.finetune.workload import load_base
from llm.tokenizer.base import Tokenizer
from llm.train.checkpoint import ADAPTER_FILE, load_checkpoint_tokenizer, load_model_state, read_state

log = logging.getLogger(__name__)

#: `export` layouts for transformers: a plain GPT-2 folder, or a PEFT LoRA adapter beside its base.
HF_FORMATS = ("hf", "peft")
WEIGHTS_FILE, CONFIG_FILE, GENERATION_FILE = "model.safetensors", "config.json", "generation_config.json"
ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
#: Where the `peft` format puts the base model, inside the adapter folder.
BASE_FOLDER = "base"


def export_hf(checkpoint_uri: str, out_uri: str, fmt: str = "hf", tokenizer_uri: str | None = None) -> dict[str, Any]:
    """Write the checkpoint at `checkpoint_uri` to the folder `out_uri` (local or s3://) as `hf` or `peft`.

    `tokenizer_uri`: the tokenizer model file (.model or .json), when the checkpoint's `state.json` does not record
    it (older checkpoints) or to use another one. Returns the format, the files written and the tokenizer.
    """
    if fmt not in HF_FORMATS:
        raise UserError(f"export format {fmt!r}: choose one of {', '.join(HF_FORMATS)}")
    state = read_state(checkpoint_uri)
    cfg = check_expressible(state["model_config"])
    tokenizer, tok_source = load_checkpoint_tokenizer(state, tokenizer_uri, checkpoint_uri)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UserError(f"the tokenizer {tok_source} has {tokenizer.vocab_size} tokens, more than the model's "
                        f"vocabulary of {cfg.vocab_size}: pass the tokenizer the model was trained with (--tokenizer)")
    adapter = is_adapter_checkpoint(state)
    method = state["finetune"]["method"] if adapter else None
    if adapter and method != "lora":
        raise UserError(f"a {method} fine-tune cannot be exported as {fmt}: its modules add computation a transformers "
                        "GPT-2 does not have (export it as `adapter` for llmpipe instead)")
    if fmt == "peft" and not adapter:
        raise UserError(f"{checkpoint_uri} is not a LoRA checkpoint, so it has no adapter: export it with --format hf")
    tok_files = tokenizer_files(tokenizer, cfg.context_length)
    if fmt == "hf":
        if adapter:
            model, _ = load_finetuned(checkpoint_uri)
            weights = merged_state_dict(model)
        else:
            weights = load_model_state(checkpoint_uri)
        files = {**model_files(weights, cfg, tokenizer), **tok_files}
    else:
        info = state["finetune"]
        base_weights, _ = load_base(info["base"], info["base_digest"])
        lora = FinetuneConfig.model_validate(info["config"]).lora
        base_ref = storage.join(storage.absolute(out_uri), BASE_FOLDER)
        files = {
            ADAPTER_CONFIG_FILE: _json(adapter_config(lora.rank, lora.alpha, lora.dropout, lora.targets, base_ref)),
            ADAPTER_WEIGHTS_FILE: _safetensors(gpt2_lora_state_dict(load_model_state(checkpoint_uri,
                                                                                     weights_file=ADAPTER_FILE))),
            **tok_files,
            **{f"{BASE_FOLDER}/{name}": data for name, data in {**model_files(base_weights, cfg, tokenizer),
                                                                 **tok_files}.items()},
        }
    write_export_folder(checkpoint_uri, out_uri, files)
    log.info("exported %s as %s to %s (tokenizer %s)", checkpoint_uri, fmt, out_uri, tok_source)
    return {"format": fmt, "files": sorted(files), "tokenizer": tok_source, **({"method": method} if method else {})}


def model_files(weights: dict[str, torch.Tensor], cfg: ModelConfig, tokenizer: Tokenizer) -> dict[str, bytes]:
    """`model.safetensors`, `config.json` and `generation_config.json` of a plain GPT's weights."""
    try:
        tensors = gpt2_state_dict(weights, cfg)
    except ValueError as exc:
        raise UserError(f"the checkpoint's weights do not fit a GPT-2: {exc}") from None
    dtype = tensors["transformer.wte.weight"].dtype
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    return {
        WEIGHTS_FILE: _safetensors(tensors),
        CONFIG_FILE: _json(gpt2_config(cfg, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, dtype)),
        GENERATION_FILE: _json({**ids, "_from_model_config": False}),
    }


def adapter_config(rank: int, alpha: float, dropout: float, targets: list[str], base: str) -> dict[str, Any]:
    """PEFT's `adapter_config.json` for the project's LoRA (scaling alpha / rank, no rsLoRA, no DoRA, no
    trained biases) on GPT-2's modules. `fan_in_fan_out`: GPT-2's Conv1D stores its weight as (in, out)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": gpt2_lora_targets(targets),
        "fan_in_fan_out": True,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }


def _json(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def _safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    # transformers reads a safetensors file only when its metadata names the framework.
    return save(tensors, metadata={"format": "pt"})
