"""A fine-tune starting from a registered model (`models:/llmpipe-gpt@current`) on a real MLflow server
over HTTP, and what it leaves there: response loss before and after, sample responses, and the
fine-tuned model registered under its own name and alias."""

from __future__ import annotations

import json

import pytest
import torch

from llm.config import FinetuneConfig, FinetuneTrainConfig, SftDataConfig
from llm.errors import UserError
from tests.finetune_setup import build_setup

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_finetune_from_a_registered_model_publishes_to_mlflow(shared_data, ray_local, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from llm.finetune.base import fetch_registered, registered_version
    from llm.finetune.trainer import finetune
    from llm.tracking import RunTarget
    from llm.train.checkpoint import load_model_state
    from llm.train.publish import register_model

    setup = build_setup(tmp_path / "setup", context_length=64, pretrain_steps=30)
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    experiment = client.create_experiment("finetune")
    pretrain_run = client.create_run(experiment, run_name="pretrain").info.run_id
    register_model(RunTarget(mlflow_server, pretrain_run), setup.base, "llmpipe-gpt", "current")

    # The registered model comes back as a checkpoint folder with the very weights that were registered.
    base = fetch_registered("models:/llmpipe-gpt@current", mlflow_server, str(tmp_path / "base"))
    fetched, original = load_model_state(base), load_model_state(setup.base)
    assert set(fetched) == set(original) and all(torch.equal(fetched[k], original[k]) for k in original)
    assert registered_version("models:/llmpipe-gpt@current", mlflow_server) == ("llmpipe-gpt", "1")
    with pytest.raises(UserError, match="not in the model registry"):
        registered_version("models:/llmpipe-gpt@nightly", mlflow_server)
    with pytest.raises(UserError, match="models:/NAME@ALIAS"):
        registered_version("models:/a/b/c", mlflow_server)

    ft = FinetuneConfig(
        method="lora", data=SftDataConfig(path=setup.sft), sample_prompts=["Hello", "What is your name?"],
        sample_tokens=6,
        train=FinetuneTrainConfig(num_workers=1, batch_size=8, micro_batch_size=8, max_steps=10, eval_every=10,
                                  eval_batches=2, checkpoint_every=10, log_every=5, learning_rate=1e-2,
                                  system_metrics=False),
    )
    run_id = client.create_run(experiment, run_name="finetune").info.run_id
    result = finetune(ft, base, setup.tokenizer, str(tmp_path / "out"), RunTarget(mlflow_server, run_id))
    assert result.response_loss_after < result.response_loss_before
    assert result.trainable_parameters < result.total_parameters / 5

    run = client.get_run(run_id)
    assert run.data.metrics["response_loss_before"] == pytest.approx(result.response_loss_before)
    assert run.data.metrics["response_loss_after"] == pytest.approx(result.response_loss_after)
    assert run.data.metrics["trainable_parameters"] == result.trainable_parameters
    assert client.get_metric_history(run_id, "loss"), "no per-step training loss"
    path = client.download_artifacts(run_id, "finetune/samples.json", str(tmp_path / "dl"))
    samples = json.loads(open(path, encoding="utf-8").read())["samples"]
    assert [s["prompt"] for s in samples] == ft.sample_prompts and all({"before", "after"} <= set(s) for s in samples)
    version = client.get_model_version_by_alias("llmpipe-gpt-sft", "current")
    assert version.run_id == run_id
    # The pretrained model's alias is untouched by the fine-tune.
    assert client.get_model_version_by_alias("llmpipe-gpt", "current").run_id == pretrain_run
