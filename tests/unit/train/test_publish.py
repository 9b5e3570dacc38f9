"""What a user finds in MLflow after pretraining: the loss-curve PNG and the registered, aliased model,
read back from a local sqlite store."""

import numpy as np
import pytest
import torch

from llm.tracking import RunTarget
from llm.train.checkpoint import load_model
from llm.train.loop import checkpoint_to, train
from llm.train.publish import LOSS_CURVE_ARTIFACT, log_loss_curve, register_model
from tests.unit.train.tiny import tiny_model, tiny_train


@pytest.fixture
def trained_run(tokens_uri, tmp_path):
    """A 20-step in-process run logging to a fresh sqlite store; returns (target, checkpoint folder)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("publish", artifact_location=str(tmp_path / "artifacts")))
    target = RunTarget(tracking_uri=uri, run_id=run.info.run_id)
    checkpoint = str(tmp_path / "ckpt")
    train(tiny_model(), tiny_train(max_steps=20, eval_every=10, log_every=5), tokens_uri, target,
          report=checkpoint_to(checkpoint))
    return target, checkpoint


def test_loss_curve_png_is_logged_to_the_run(trained_run, tmp_path):
    target, _ = trained_run
    assert log_loss_curve(target) == LOSS_CURVE_ARTIFACT
    folder = target.client().download_artifacts(target.run_id, LOSS_CURVE_ARTIFACT, str(tmp_path / "dl"))
    data = open(folder, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000  # a drawn figure, not an empty canvas


def test_final_model_is_registered_with_alias_and_predicts_like_the_checkpoint(trained_run):
    import mlflow.pyfunc

    from mlflow.tracking import MlflowClient

    target, checkpoint = trained_run
    # Registry named explicitly: other tests in the session may have set a process-wide one.
    client = MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.tracking_uri)
    assert register_model(target, checkpoint, "tiny-gpt", "current") == "1"
    # A second registration moves the alias to the new version.
    assert register_model(target, checkpoint, "tiny-gpt", "current") == "2"
    version = client.get_model_version_by_alias("tiny-gpt", "current")
    assert str(version.version) == "2" and version.run_id == target.run_id

    loaded = mlflow.pyfunc.load_model(client.get_model_version_download_uri("tiny-gpt", version.version))
    signature = loaded.metadata.signature
    assert signature is not None and signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] == "int64"
    ids = np.array([[2, 4, 5, 6, 7, 8]], dtype=np.int64)
    logits = np.asarray(loaded.predict(ids))
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        expected, _ = model(torch.from_numpy(ids))
    assert logits.shape == (1, 6, model.cfg.vocab_size)
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_publishing_leaves_the_process_tracking_settings_as_they_were(tmp_path, monkeypatch):
    """Registering a model must not repoint later stages: MLflow's fluent URI setters write
    MLFLOW_TRACKING_URI into the environment, which the pipeline reads to find its store."""
    import os

    from llm.train.publish import _fluent_uris

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:///elsewhere.db")
    with _fluent_uris(f"sqlite:///{tmp_path / 'x.db'}"):
        assert os.environ["MLFLOW_TRACKING_URI"].endswith("x.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert os.environ["MLFLOW_REGISTRY_URI"] == "sqlite:///elsewhere.db"
