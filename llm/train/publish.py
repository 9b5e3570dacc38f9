"""What a pretraining run leaves in MLflow for its users: a loss-curve PNG and a registered model.

Both run in the driver after training, from what the workers already logged (the metric history) and
the final checkpoint, so they see the whole run including any restarts after a worker failure.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

from llm.tracking import RunTarget

LOSS_CURVE_ARTIFACT = "plots/loss_curve.png"
#: Key of the registered model's metadata that holds its `ModelConfig`.
MODEL_CONFIG_KEY = "llmpipe_model_config"


class LogitsOnly(nn.Module):
    """The GPT as a registry model: token ids (B, T) int64 -> logits (B, T, vocab) float32.

    `GPT.forward` returns (logits, loss); MLflow's pyfunc flavour expects one tensor out.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model(idx)
        return logits


def _history(target: RunTarget, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric; a step logged twice (re-run after a restart) keeps its last value."""
    by_step: dict[int, float] = {}
    for metric in sorted(target.client().get_metric_history(target.run_id, key), key=lambda m: m.timestamp):
        by_step[metric.step] = metric.value
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def log_loss_curve(target: RunTarget) -> str:
    """Plot the run's train `loss` and `val_loss` (nats/token) against step and log the PNG to the run
    as `plots/loss_curve.png`; returns that artifact path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers or CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        steps, values = _history(target, key)
        if steps:
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("pretraining loss")
    ax.grid(alpha=0.3)
    ax.legend()
    with tempfile.TemporaryDirectory(prefix="llmpipe-plot-") as folder:
        path = Path(folder) / Path(LOSS_CURVE_ARTIFACT).name
        fig.savefig(path)
        plt.close(fig)
        target.log_artifact(str(path), str(Path(LOSS_CURVE_ARTIFACT).parent))
    return LOSS_CURVE_ARTIFACT


@contextmanager
def _fluent_uris(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs at `uri`, then put back exactly what was
    there. `mlflow.set_tracking_uri` also writes `MLFLOW_TRACKING_URI` into the environment, and
    restoring it through the same call would pin the process (and every later stage that reads the
    variable) to whatever default MLflow resolved, so the module state and the variables are
    snapshotted and restored as they were."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def register_model(target: RunTarget, checkpoint_uri: str, name: str, alias: str) -> str:
    """Log the checkpoint's model to the run (MLflow pytorch flavour, with an input example so the
    signature is recorded), register it as `name` and point `alias` at the new version; returns it."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.tracking import MlflowClient
    from mlflow.types import Schema, TensorSpec

    from llm.train.checkpoint import load_model

    model, state = load_model(checkpoint_uri)
    context = int(state["model_config"]["context_length"])
    # A short int64 sequence of token ids: enough for MLflow to infer the (B, T) -> (B, T, vocab) signature.
    example = torch.zeros(1, min(8, context), dtype=torch.long).numpy()
    # Explicit, so any batch size and sequence length up to the context are accepted (an inferred
    # signature would pin the example's length).
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("int64"), (-1, -1))]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, -1, int(state["model_config"]["vocab_size"])))]),
    )
    with _fluent_uris(target.tracking_uri):
        with mlflow.start_run(run_id=target.run_id):
            info = mlflow.pytorch.log_model(
                LogitsOnly(model), name="model", input_example=example, signature=signature,
                registered_model_name=name,
                # The shape, so a registered model can be rebuilt as a GPT (a fine-tune's base).
                metadata={MODEL_CONFIG_KEY: state["model_config"]},
            )
    version = str(info.registered_model_version)
    client = MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.tracking_uri)
    client.set_registered_model_alias(name, alias, version)
    return version
