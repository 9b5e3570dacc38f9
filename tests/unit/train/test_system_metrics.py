"""System metrics of a training run land in its MLflow run (rank 0's host, `system/...` names)."""

import pytest

from llm.tracking import RunTarget
from llm.train.loop import train
from tests.unit.train.tiny import tiny_model, tiny_train


@pytest.fixture
def store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("train", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, client, exp


@pytest.mark.parametrize("enabled", [True, False])
def test_training_logs_system_metrics_to_its_run(tokens_uri, store, enabled):
    uri, client, exp = store
    run = client.create_run(exp)
    cfg = tiny_train(max_steps=4, eval_every=4, checkpoint_every=4, log_every=2, system_metrics=enabled)
    train(tiny_model(), cfg, tokens_uri, RunTarget(uri, run.info.run_id))
    metrics = client.get_run(run.info.run_id).data.metrics
    assert "loss" in metrics  # the training metrics share the run
    system = {k for k in metrics if k.startswith("system/")}
    if enabled:
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system
        cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        assert cpu and all(0 <= m.value <= 100 * 1024 for m in cpu)
    else:
        assert not system
