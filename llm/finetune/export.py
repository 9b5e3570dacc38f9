"""A fine-tune's checkpoint as a usable model: loaded for inference, or exported merged or as base + adapter.

An adapter-only checkpoint (`adapter.pt`) names its base by path and weights digest in `state.json`;
loading it rebuilds the base, checks the digest and applies the method again. LoRA then folds its update
into the weights (`merged`), so the result is a plain GPT; prefix and adapter modules stay, since they
add computation a plain GPT does not have (a prefix trained through its MLP has the MLP dropped).
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from llm import storage
from llm.config import FinetuneConfig, ModelConfig
from llm.errors import UserError
from llm.finetune.methods import apply_method
from llm.finetune.workload import load_base
from llm.model.gpt import GPT
from llm.model.peft import LoRALinear, drop_prefix_reparam, load_peft_state_dict, peft_state_dict
from llm.train.checkpoint import ADAPTER_FILE, MODEL_FILE, STATE_FILE, load_model_state, read_state

#: `export` layouts: one plain model.pt, or the base's reference plus adapter.pt.
EXPORT_FORMATS = ("merged", "adapter")


def is_adapter_checkpoint(state: dict[str, Any]) -> bool:
    """Whether a checkpoint's `state.json` belongs to an adapter-only fine-tune checkpoint."""
    return state.get("weights_file") == ADAPTER_FILE


def load_finetuned(checkpoint_uri: str, base_uri: str | None = None, device: torch.device | str = "cpu",
                   merge: bool = True) -> tuple[GPT, dict[str, Any]]:
    """The fine-tuned model of an adapter-only checkpoint, in eval mode, and its `state.json`.

    `base_uri`: where the base is now, when it moved since training (its digest must still match).
    `merge`: fold LoRA updates into the weights and drop a prefix's MLP (inference form).
    """
    state = read_state(checkpoint_uri)
    if not is_adapter_checkpoint(state):
        raise UserError(f"{checkpoint_uri} is not an adapter checkpoint (it holds {state.get('weights_file', MODEL_FILE)})")
    info = state["finetune"]
    weights, _ = load_base(base_uri or info["base"], info["base_digest"])
    model = GPT(ModelConfig.model_validate(state["model_config"]))
    model.load_state_dict(weights)
    apply_method(model, FinetuneConfig.model_validate(info["config"]))
    load_peft_state_dict(model, load_model_state(checkpoint_uri, weights_file=ADAPTER_FILE))
    if merge:
        merge_for_inference(model)
    model.to(device)
    model.eval()
    return model, state


def merge_for_inference(model: GPT) -> None:
    """Fold every LoRA update into its weight and drop prefix MLPs: the same outputs, fewer operations."""
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.merge()
    drop_prefix_reparam(model)


def merged_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """A merged LoRA model's weights in plain GPT's layout (the `lora_*` entries left out)."""
    if any(isinstance(m, LoRALinear) and not m.merged for m in model.modules()):
        raise ValueError("merge the LoRA layers first (merge_for_inference)")
    extra = set(peft_state_dict(model))
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in extra}


def export(checkpoint_uri: str, out_uri: str, fmt: str = "merged") -> dict[str, Any]:
    """Write a fine-tune checkpoint to `out_uri` as `merged` (a plain checkpoint: model.pt and state.json
    that any consumer of a pretraining checkpoint reads) or `adapter` (adapter.pt and state.json naming
    the base by path and digest). Returns what was written and the sizes."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    state = read_state(checkpoint_uri)
    if not is_adapter_checkpoint(state):
        if fmt == "adapter":
            raise UserError("a full fine-tune has no adapter: export it merged (it already is one model)")
        write_export_folder(checkpoint_uri, out_uri, {name: storage.read_bytes(storage.join(checkpoint_uri, name))
                                                      for name in (MODEL_FILE, STATE_FILE)})
        return {"format": fmt, "files": [MODEL_FILE, STATE_FILE]}
    method = state["finetune"]["method"]
    if fmt == "adapter":
        write_export_folder(checkpoint_uri, out_uri, {name: storage.read_bytes(storage.join(checkpoint_uri, name))
                                                      for name in (ADAPTER_FILE, STATE_FILE)})
        return {"format": fmt, "files": [ADAPTER_FILE, STATE_FILE], "method": method}
    if method != "lora":
        raise UserError(f"a {method} fine-tune cannot be merged into a plain model (its modules add computation): "
                        "export it as `adapter`")
    model, _ = load_finetuned(checkpoint_uri)
    weights = merged_state_dict(model)
    plain = {k: v for k, v in state.items() if k not in ("weights_file", "optimizer_format", "rng", "rng_per_rank")}
    plain["weights_file"] = MODEL_FILE
    plain["merged_from"] = {"checkpoint": checkpoint_uri, "base_digest": state["finetune"]["base_digest"]}
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    write_export_folder(checkpoint_uri, out_uri, {MODEL_FILE: buffer.getvalue(),
                                                  STATE_FILE: json.dumps(plain, indent=2).encode()})
    return {"format": fmt, "files": [MODEL_FILE, STATE_FILE], "method": method}


def write_export_folder(source_uri: str, out_uri: str, files: dict[str, bytes]) -> None:
    """Put `files` (relative path -> bytes) in the folder `out_uri` as a whole: an earlier export there is
    replaced only once the new one is complete. `source_uri`: the checkpoint, which is never overwritten."""
    if storage.absolute(source_uri).rstrip("/") == storage.absolute(out_uri).rstrip("/"):
        raise UserError(f"export to {out_uri}: that is the checkpoint itself; choose another folder")
    with tempfile.TemporaryDirectory(prefix="llmpipe-export-") as tmp:
        folder = Path(tmp) / "export"  # made with the user's umask (a temporary folder is private)
        folder.mkdir()
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        storage.replace_dir(str(folder), out_uri)
