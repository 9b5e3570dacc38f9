"""Bits per byte in validation: the bytes of text behind exactly the targets scored, bpb = summed loss
/ (ln 2 * bytes), `val_bpb` in the log line and MLflow; token datasets without byte counts are scored
as before, with one warning."""

import logging
import math

import numpy as np
import pytest
import torch

from llm.config import ModelConfig, TrainConfig
from llm.model import GPT
from llm.tracking import RunTarget
from llm.train.data import TokenDataset, write_token_dataset
from llm.train.loop import train
from llm.train.validation import held_out_score, validation_loss
from tests.unit.data.multilingual_tokens import tokenize_multilingual
from tests.unit.train.tiny import VOCAB, counting_docs

CONTEXT, BATCH, BATCHES = 16, 2, 3
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tokens_uri(tmp_path_factory, shared_data) -> str:
    root = tmp_path_factory.mktemp("bpb")
    tokenize_multilingual(root, shared_data)
    return str(root / "tokens")


def _model(vocab: int) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(layers=1, hidden_size=32, attention_heads=2, context_length=CONTEXT, vocab_size=vocab))


def test_bits_per_byte_divides_the_summed_loss_by_the_bytes_of_the_scored_targets(tokens_uri):
    dataset = TokenDataset(tokens_uri)
    split = dataset.split("val")
    score = held_out_score(_model(dataset.vocab_size), split, CONTEXT, BATCH, BATCHES, CPU)
    assert score.tokens == BATCH * BATCHES * CONTEXT
    # window k reads tokens [16k, 16k + 17) and scores the last 16: their bytes, from the raw file
    entries = dataset.manifest.splits["val"]
    counts = np.concatenate([np.fromfile(f"{tokens_uri}/{e['token_bytes']}", dtype="<u2") for e in entries])
    assert score.bytes == int(counts[1:score.tokens + 1].sum()) > score.tokens  # multi-byte text
    assert score.bits_per_byte == pytest.approx(score.loss * score.tokens / (math.log(2) * score.bytes), rel=1e-12)
    plain = validation_loss(_model(dataset.vocab_size), split, CONTEXT, BATCH, BATCHES, CPU)
    assert (score.loss, score.tokens) == plain


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One SQLite tracking store for the module (making one costs seconds); each test takes a run."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    return client, uri, client.create_experiment("bpb", artifact_location=(root / "art").as_uri())


def _run(mlflow_store):
    client, uri, experiment = mlflow_store
    return client, RunTarget(uri, client.create_run(experiment).info.run_id)


def _train(tokens_uri, run_target=None):
    cfg = TrainConfig(num_workers=1, batch_size=4, micro_batch_size=2, max_steps=4, warmup_steps=1, eval_every=2,
                      eval_batches=2, checkpoint_every=4, log_every=2)
    return train(ModelConfig(layers=1, hidden_size=32, attention_heads=2, context_length=CONTEXT), cfg, tokens_uri,
                 run_target)


def test_training_logs_val_bpb_beside_the_loss(tokens_uri, mlflow_store, caplog):
    client, target = _run(mlflow_store)
    with caplog.at_level(logging.INFO, logger="llm.train"):
        summary = _train(tokens_uri, target)
    history = client.get_metric_history(target.run_id, "val_bpb")
    losses = client.get_metric_history(target.run_id, "val_loss")
    assert [m.step for m in history] == [m.step for m in losses] == [0, 2, 4]
    assert summary.final_val_bpb == pytest.approx(history[-1].value)
    assert history[-1].value < history[0].value  # it learns, in bytes as in tokens
    lines = [r.getMessage() for r in caplog.records if "val_loss" in r.getMessage()]
    assert len(lines) == 3 and all("| val_bpb " in line for line in lines)


def test_a_dataset_without_byte_counts_is_scored_without_bpb_and_one_warning(tmp_path, mlflow_store, caplog):
    old = str(tmp_path / "old-tokens")
    write_token_dataset(old, {"train": counting_docs(60, 0), "val": counting_docs(20, 1)}, vocab_size=VOCAB)
    assert not TokenDataset(old).split("val").has_bytes
    score = held_out_score(_model(VOCAB), TokenDataset(old).split("val"), CONTEXT, BATCH, BATCHES, CPU)
    assert score.bytes is None and score.bits_per_byte is None and score.tokens == BATCH * BATCHES * CONTEXT
    client, target = _run(mlflow_store)
    with caplog.at_level(logging.INFO, logger="llm"):
        summary = _train(old, target)
    assert summary.final_val_bpb is None and summary.steps == 4
    assert not client.get_metric_history(target.run_id, "val_bpb")
    assert len(client.get_metric_history(target.run_id, "val_loss")) == 3
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([m for m in warned if "val_bpb" in m]) == 1, warned
