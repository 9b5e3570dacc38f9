"""Where a fine-tune starts: a checkpoint folder, or a model registered in MLflow (`models:/NAME@ALIAS`).

A registered model is fetched once into a plain checkpoint folder (model.pt and state.json) under the
fine-tune's output, keyed by its registry version, so the workers read a file like any other base and
the checkpoint can name it by digest.
"""

from __future__ import annotations

import io
import json
import re

import torch

from llm import storage
from llm.config import ModelConfig
from llm.errors import UserError
from llm.model.gpt import GPT
from llm.train.checkpoint import MODEL_FILE, STATE_FILE

_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def is_registered(ref: str) -> bool:
    """Whether `ref` names a registered model (`models:/NAME@ALIAS` or `models:/NAME/VERSION`)."""
    return ref.startswith("models:/")


def check_registered_ref(ref: str, setting: str = "finetune.base") -> re.Match:
    """The parts (name, alias or version) of a `models:/` reference; a `UserError` naming `setting` when it
    has another shape. Needs no registry, so a typo is reported before any store is opened."""
    match = _REGISTERED.match(ref)
    if not match:
        raise UserError(f"{setting} {ref!r}: write a registered model as models:/NAME@ALIAS or models:/NAME/VERSION")
    return match


def registered_version(ref: str, tracking_uri: str, setting: str = "finetune.base") -> tuple[str, str]:
    """(name, version) that `ref` points at now in the registry at `tracking_uri`; `setting` is what
    error messages call the reference."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    match = check_registered_ref(ref, setting)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name = match["name"]
    try:
        if match["alias"]:
            return name, str(client.get_model_version_by_alias(name, match["alias"]).version)
        return name, str(client.get_model_version(name, match["version"]).version)
    except MlflowException as exc:
        raise UserError(f"{setting} {ref!r}: not in the model registry at {tracking_uri} ({exc.message})") from None


def fetch_registered(ref: str, tracking_uri: str, folder_uri: str, setting: str = "finetune.base") -> str:
    """Write the registered model `ref` as a checkpoint folder at `folder_uri` (once: an existing complete
    folder is reused) and return it; `setting` is what error messages call the reference."""
    if storage.exists(storage.join(folder_uri, STATE_FILE)):
        return folder_uri
    import tempfile
    from pathlib import Path

    import mlflow.models
    import mlflow.pytorch

    from llm.train.publish import MODEL_CONFIG_KEY, _fluent_uris

    name, version = registered_version(ref, tracking_uri, setting)
    uri = f"models:/{name}/{version}"
    with _fluent_uris(tracking_uri):
        metadata = mlflow.models.get_model_info(uri).metadata or {}
        if MODEL_CONFIG_KEY not in metadata:
            raise UserError(f"{setting} {ref!r}: the registered model carries no model shape (it was not "
                            "registered by this project's pretrain or finetune stage)")
        # Registered models are stored as exported graphs: their weights keep the GPT's names under `model.`.
        loaded = mlflow.pytorch.load_model(uri, map_location="cpu")
    model_cfg = ModelConfig.model_validate(metadata[MODEL_CONFIG_KEY])
    # A registered LoRA fine-tune was merged before it was registered: its `lora_*` factors are already in
    # the weights, and what is left is a plain GPT.
    weights = {k.removeprefix("model."): v.detach().cpu() for k, v in loaded.state_dict().items()
               if ".lora_" not in k}
    model = GPT(model_cfg)
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise UserError(f"{setting} {ref!r}: the registered model is not a plain GPT (a prefix or adapter "
                        "fine-tune keeps its extra modules): start from its base, or from a LoRA or full "
                        "fine-tune") from None
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    state = {"step": 0, "model_config": model_cfg.model_dump(mode="json"), "vocab_size": model_cfg.vocab_size,
             "weights_file": MODEL_FILE, "registered_model": {"name": name, "version": version, "ref": ref}}
    with tempfile.TemporaryDirectory(prefix="llmpipe-base-") as tmp:
        folder = Path(tmp) / "base"  # made with the user's umask (a temporary folder is private)
        folder.mkdir()
        (folder / MODEL_FILE).write_bytes(buffer.getvalue())
        (folder / STATE_FILE).write_text(json.dumps(state, indent=2))
        storage.replace_dir(str(folder), folder_uri)
    return folder_uri
