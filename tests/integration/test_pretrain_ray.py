"""Pre-training on local Ray Train: two CPU workers, DDP over gloo, checkpoints, MLflow metrics."""

import pytest

from llm.config import ModelConfig, TrainConfig
from llm.tracking import RunTarget
from llm.train.data import write_token_dataset
from tests.unit.train.tiny import VOCAB, counting_docs

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_pretrain_two_workers_checkpoints_and_metrics(ray_local, tmp_path):
    """`ray_local` (tests/conftest.py): one local Ray on 127.0.0.1, shut down at the session's end."""
    from mlflow.tracking import MlflowClient

    from llm.train.checkpoint import load_model
    from llm.train.data import TokenDataset
    from llm.train.trainer import pretrain
    from llm.train.validation import validation_loss

    import torch

    tokens = str(tmp_path / "tokens")
    write_token_dataset(tokens, {"train": counting_docs(200, 0), "val": counting_docs(40, 1)}, vocab_size=VOCAB)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.create_run(client.create_experiment("pretrain-test", artifact_location=(tmp_path / "artifacts").as_uri()))
    target = RunTarget(tracking_uri=tracking_uri, run_id=run.info.run_id)

    model_cfg = ModelConfig(layers=2, hidden_size=32, attention_heads=2, context_length=32)
    train_cfg = TrainConfig(
        num_workers=2, batch_size=8, micro_batch_size=2, learning_rate=1e-2, warmup_steps=5, max_steps=40,
        eval_every=20, eval_batches=4, checkpoint_every=20, log_every=10, seed=3,
    )
    result = pretrain(model_cfg, train_cfg, tokens, str(tmp_path / "out"), run_target=target)

    assert result.steps == 40
    assert result.tokens_seen == 40 * 8 * 32
    assert result.final_val_loss < 0.5 * result.initial_val_loss
    assert result.checkpoint_uri == str(tmp_path / "out" / "final")

    # The final checkpoint reloads and reproduces the validation loss the workers computed.
    model, state = load_model(result.checkpoint_uri)
    assert state["step"] == 40 and state["model_config"]["vocab_size"] == VOCAB
    val = TokenDataset(tokens).split("val")
    loss, _ = validation_loss(model, val, 32, train_cfg.micro_batch_size, train_cfg.eval_batches, torch.device("cpu"))
    assert abs(loss - result.final_val_loss) < 1e-5

    # Ray kept at most two checkpoints of the run.
    ray_dirs = [p for p in (tmp_path / "out" / "ray").glob("pretrain-*/checkpoint_*") if p.is_dir()]
    assert 1 <= len(ray_dirs) <= 2

    # Rank 0 streamed the step metrics to MLflow.
    for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [10, 20, 30, 40], key
    val_history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in val_history] == [0, 20, 40]
    assert val_history[-1].value == pytest.approx(result.final_val_loss)


def test_pretrain_pipeline_parallel_on_ray_writes_a_whole_model(ray_local, tmp_path):
    """pp over two Ray Train workers: the loss comes from the last stage, the checkpoint merges both
    stages into one GPT state dict that reproduces the workers' validation loss."""
    import torch

    from llm.train.checkpoint import load_model
    from llm.train.data import TokenDataset
    from llm.train.trainer import pretrain
    from llm.train.validation import validation_loss

    tokens = str(tmp_path / "tokens")
    write_token_dataset(tokens, {"train": counting_docs(200, 0), "val": counting_docs(40, 1)}, vocab_size=VOCAB)
    model_cfg = ModelConfig(layers=2, hidden_size=32, attention_heads=2, context_length=32)
    train_cfg = TrainConfig(
        strategy="pp", pipeline_parallel=2, num_workers=2, batch_size=8, micro_batch_size=2, learning_rate=1e-2,
        warmup_steps=5, max_steps=20, eval_every=20, eval_batches=4, checkpoint_every=20, log_every=10, seed=3,
    )
    result = pretrain(model_cfg, train_cfg, tokens, str(tmp_path / "out"))
    assert result.steps == 20 and result.final_train_loss is not None
    assert result.final_val_loss < 0.8 * result.initial_val_loss
    model, state = load_model(result.checkpoint_uri)
    assert state["train_config"]["strategy"] == "pp"
    val = TokenDataset(tokens).split("val")
    loss, _ = validation_loss(model, val, 32, train_cfg.micro_batch_size, train_cfg.eval_batches, torch.device("cpu"))
    assert abs(loss - result.final_val_loss) < 1e-5
