"""Checkpoints: a folder with `model.pt`, `optimizer.pt` and `state.json`.

Under fsdp/tp the model and optimizer state are instead per-rank DCP shards in `sharded/`
(`llm.train.parallel.sharded_checkpoint`) and there is no `optimizer.pt`; `model.pt` is still written.

`model.pt` is the state dict of the plain (unwrapped) model, so a checkpoint written by any parallel
strategy loads into `GPT` directly. `state.json` holds the step, both configs, the vocabulary size, the
RNG states (base64), the losses so far and, when the run was given it, the tokenizer (`tokenizer_record`);
it is written last, so a folder with a `state.json` is complete.
"""

from __future__ import annotations

import base64
import logging
import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from llm import storage
from llm.config import ModelConfig, TrainConfig
from llm.errors import InputNotFound, UserError
from llm.model.gpt import GPT

log = logging.getLogger(__name__)

MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.pt", "optimizer.pt", "state.json"
#: A parameter-efficient fine-tune's checkpoint holds only the method's weights, under this name.
ADAPTER_FILE = "adapter.pt"


def tokenizer_record(uri: str, model_bytes: bytes | None = None) -> dict[str, str]:
    """What `state.json` records under `tokenizer` of the tokenizer a model was trained with: the
    absolute URI of its model file (SentencePiece .model or tokenizer.json) and the file's sha256
    (`model_bytes`: its bytes, when already read), so an export finds it and can tell whether it changed
    since."""
    data = storage.read_bytes(uri) if model_bytes is None else model_bytes
    return {"uri": storage.absolute(uri), "sha256": hashlib.sha256(data).hexdigest()}


def _recorded_tokenizer(state: dict[str, Any]) -> dict[str, str] | None:
    # An adapter checkpoint made before fine-tuning recorded its tokenizer has its base's record.
    recorded = state.get("tokenizer")
    if recorded is None and state.get("weights_file") == ADAPTER_FILE and state.get("finetune", {}).get("base"):
        try:
            recorded = read_state(state["finetune"]["base"]).get("tokenizer")
        except InputNotFound:
            recorded = None
    return recorded if isinstance(recorded, dict) else None


def checkpoint_tokenizer(state: dict[str, Any], override: str | None, setting: str = "the checkpoint") -> str:
    """The tokenizer a checkpoint's ids belong to: `override` (`--tokenizer`) when given, else the
    `tokenizer.uri` its `state.json` records. Either may be a tokenizer stage's folder, whose current
    version is taken. A `UserError` naming `setting` when neither is there (checkpoints made before the
    record existed)."""
    recorded = _recorded_tokenizer(state)
    uri = override or (recorded.get("uri") if recorded else None)
    if not uri:
        raise UserError(f"{setting}: its state.json records no tokenizer (made before checkpoints recorded one): "
                        "pass --tokenizer PATH (the model file, .model or .json, or the work directory's tokenizer/ folder)")
    if storage.exists(storage.join(uri, "_manifest.json")):
        from llm.tokenizer.stage import tokenizer_uri

        return tokenizer_uri(uri)
    return uri


def load_checkpoint_tokenizer(state: dict[str, Any], override: str | None = None,
                              setting: str = "the checkpoint") -> tuple[Any, str]:
    """(the tokenizer, its URI) of a checkpoint, as `checkpoint_tokenizer` finds it, checked against the
    digest `state.json` records: a recorded tokenizer that changed since is a `UserError`; an override
    that differs from the record is used, with a warning (its ids must still be the model's)."""
    from llm.tokenizer.base import tokenizer_from_bytes

    uri = checkpoint_tokenizer(state, override, setting)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise InputNotFound(f"{setting}: no tokenizer file at {uri} (pass --tokenizer PATH to its model file, "
                            ".model or .json)") from None
    recorded, digest = _recorded_tokenizer(state), hashlib.sha256(data).hexdigest()
    if recorded and recorded.get("sha256") and digest != recorded["sha256"]:
        if not override:
            raise UserError(f"the tokenizer at {uri} changed since {setting} was trained (sha256 {digest[:16]}, "
                            f"recorded {recorded['sha256'][:16]}): pass the original with --tokenizer")
        log.warning("--tokenizer %s is not the tokenizer %s records (%s): its ids must be the model's", override,
                    setting, recorded.get("uri"))
    return tokenizer_from_bytes(data), uri

def _encode_tensor(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _decode_byte_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """This process's torch (CPU and CUDA) and Python RNG states as JSON-friendly values."""
    state: dict[str, Any] = {"torch": _encode_tensor(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = _encode_tensor(torch.cuda.get_rng_state())
    version, internal, gauss = random.getstate()
    state["python"] = [version, list(internal), gauss]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned (dropout masks then continue where the run left off)."""
    if "torch" in state:
        torch.set_rng_state(_decode_byte_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_decode_byte_tensor(state["cuda"]))
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    directory: str,
    model: nn.Module | dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | dict[str, Any] | None,
    step: int,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    metrics: dict[str, Any] | None = None,
    weights_file: str = MODEL_FILE,
) -> None:
    """Write a checkpoint folder (local path) for the plain `model` (or its full state dict) after `step`
    optimizer steps. `optimizer`: the optimizer or its state dict (sharded strategies pass the full,
    name-keyed state); None writes no `optimizer.pt`.

    `metrics` (val_loss, initial_val_loss, tokens_seen, ...) is stored in `state.json` as it is.
    `weights_file`: `adapter.pt` when `model` is a fine-tuning method's weights alone.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model if isinstance(model, dict) else model.state_dict(), folder / weights_file)
    if optimizer is not None:
        torch.save(optimizer if isinstance(optimizer, dict) else optimizer.state_dict(), folder / OPTIMIZER_FILE)
    state = {
        "step": step,
        "model_config": model_cfg.model_dump(mode="json"),
        "train_config": train_cfg.model_dump(mode="json"),
        "vocab_size": model_cfg.vocab_size,
        "weights_file": weights_file,
        "rng": rng_state(),
        **(metrics or {}),
    }
    storage.write_text(str(folder / STATE_FILE), json.dumps(state, indent=2))


def read_state(checkpoint_uri: str) -> dict[str, Any]:
    """The `state.json` of a checkpoint folder (local or s3://)."""
    uri = storage.join(checkpoint_uri, STATE_FILE)
    try:
        return json.loads(storage.read_text(uri))
    except FileNotFoundError:
        raise InputNotFound(f"{checkpoint_uri}: not a checkpoint folder (no {STATE_FILE})") from None


def _load_tensor_file(uri: str, device: torch.device | str) -> Any:
    # weights_only: a checkpoint is data, never code to run.
    return torch.load(io.BytesIO(storage.read_bytes(uri)), map_location=device, weights_only=True)


def load_optimizer_state(checkpoint_uri: str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The optimizer state dict of a checkpoint folder."""
    return _load_tensor_file(storage.join(checkpoint_uri, OPTIMIZER_FILE), device)


def load_model_state(checkpoint_uri: str, device: torch.device | str = "cpu",
                     weights_file: str = MODEL_FILE) -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint folder (`weights_file`: `adapter.pt` for a fine-tune's)."""
    return _load_tensor_file(storage.join(checkpoint_uri, weights_file), device)


def load_model(checkpoint_uri: str, device: torch.device | str = "cpu") -> tuple[GPT, dict[str, Any]]:
    """Rebuild the model saved in a checkpoint folder (local or s3://), in eval mode.

    Returns (model, state) where `state` is the checkpoint's `state.json` (step, configs, losses).
    """
    state = read_state(checkpoint_uri)
    if state.get("weights_file", MODEL_FILE) == ADAPTER_FILE:  # a fine-tune's adapter: base + method
        # Imported by name, so the code digest of stages that only read plain checkpoints does not
        # follow it into the fine-tuning code.
        import importlib

        return importlib.import_module("llm.finetune.export").load_finetuned(checkpoint_uri, device=device)
    model_cfg = ModelConfig.model_validate(state["model_config"])
    model = GPT(model_cfg)
    model.load_state_dict(load_model_state(checkpoint_uri, device))
    model.to(device)
    model.eval()
    return model, state
