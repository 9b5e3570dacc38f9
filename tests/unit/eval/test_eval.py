"""Evaluation of a checkpoint: test-split loss, perplexity = exp(loss), reproducible samples, MLflow
artifact; datasets without a test split fall back to validation, saying so."""

import json
import logging
import math
import os

import numpy as np
import pytest
import torch

from llm import storage
from llm.config import EvalConfig, ModelConfig, TrainConfig
from llm.eval import evaluate
from llm.tokenizer.base import load_tokenizer, tokenizer_from_bytes
from llm.tokenizer.spm import train_sentencepiece
from llm.tokenizer.token_bytes import TokenByteCounter
from llm.tracking import RunTarget
from llm.train.checkpoint import load_model
from llm.train.data import TokenDataset, write_token_dataset
from llm.train.loop import checkpoint_to, train
from llm.train.validation import validation_loss

TEXT = [
    "def add(a, b):\n    return a + b\n",
    "The Python standard library has modules for files, text and numbers.\n",
    "import os\nimport sys\nprint(os.getcwd())\n",
    "def main():\n    print('hello world')\n",
] * 10
# held out for the test split only: text neither training nor validation saw
TEST_TEXT = ["def sub(a, b):\n    return a - b\n", "print(sys.argv)\n"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    proto = train_sentencepiece(TEXT, vocab_size=400)
    tok_uri = str(root / "tokenizer.model")
    storage.write_bytes(tok_uri, proto)
    tok = tokenizer_from_bytes(proto)
    docs = [[tok.bos_id, *tok.encode(t), tok.eos_id] for t in TEXT]
    test_docs = [[tok.bos_id, *tok.encode(t), tok.eos_id] for t in TEST_TEXT]
    counter = TokenByteCounter(tok)
    byte_counts = {name: [[0, *counter.counts(t, tok.encode(t)), 0] for t in texts]
                   for name, texts in (("val", TEXT), ("test", TEST_TEXT))}
    tokens_uri = str(root / "tokens")
    write_token_dataset(tokens_uri, {"train": docs, "val": docs, "test": test_docs}, vocab_size=tok.vocab_size,
                        token_bytes=byte_counts)
    # a token dataset made before there was a test split (nor bytes per token), and one made with
    # tokenize.test_fraction=0
    for name, extra in [("tokens-no-test", {}), ("tokens-empty-test", {"test": []})]:
        write_token_dataset(str(root / name), {"train": docs, "val": docs, **extra}, vocab_size=tok.vocab_size)
    ckpt = str(root / "ckpt")
    summary = train(
        ModelConfig(layers=1, hidden_size=32, attention_heads=2, context_length=16),
        TrainConfig(num_workers=1, batch_size=4, micro_batch_size=4, max_steps=30, warmup_steps=3,
                    learning_rate=1e-2, eval_every=30, eval_batches=2, checkpoint_every=30),
        tokens_uri,
        report=checkpoint_to(ckpt),
    )
    return ckpt, tokens_uri, tok_uri, summary


def test_evaluate_scores_and_samples_reproducibly(trained):
    ckpt, tokens_uri, tok_uri, summary = trained
    cfg = EvalConfig(batches=2, prompts=["def main(", "import os\n"], max_new_tokens=12, temperature=0.8, top_k=20)
    a = evaluate(ckpt, tokens_uri, tok_uri, cfg)
    assert a.split == "test"
    assert a.perplexity == pytest.approx(math.exp(a.val_loss))
    assert [s["prompt"] for s in a.samples] == cfg.prompts
    assert all(isinstance(s["completion"], str) for s in a.samples)
    b = evaluate(ckpt, tokens_uri, tok_uri, cfg)
    assert a.samples == b.samples
    c = evaluate(ckpt, tokens_uri, tok_uri, cfg, seed=1)
    assert c.samples != a.samples


def test_evaluate_logs_metrics_and_samples_to_mlflow(trained, tmp_path):
    from mlflow.tracking import MlflowClient

    ckpt, tokens_uri, tok_uri, _ = trained
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("eval", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp)
    cfg = EvalConfig(batches=1, prompts=["def "], max_new_tokens=4)
    result = evaluate(ckpt, tokens_uri, tok_uri, cfg, run_target=RunTarget(uri, run.info.run_id))
    history = client.get_metric_history(run.info.run_id, "eval_perplexity")
    assert [m.value for m in history] == [pytest.approx(result.perplexity)]
    bpb = client.get_metric_history(run.info.run_id, "eval_bpb")
    assert [m.value for m in bpb] == [pytest.approx(result.eval_bpb)]
    assert client.get_run(run.info.run_id).data.metrics["eval_bytes"] == result.bytes_evaluated
    path = client.download_artifacts(run.info.run_id, "samples.json", str(tmp_path))
    assert json.loads(open(path).read()) == result.samples


def test_evaluate_scores_the_test_split_not_validation(trained):
    ckpt, tokens_uri, tok_uri, summary = trained
    test = TokenDataset(tokens_uri).split("test")
    # more batches than the short test split fills: every window of it is scored, and nothing else
    result = evaluate(ckpt, tokens_uri, tok_uri, EvalConfig(batches=8, prompts=["def "], max_new_tokens=2))
    assert result.split == "test"
    assert result.tokens_evaluated == (len(test) - 1) // 16 * 16 > 0
    model, _ = load_model(ckpt, torch.device("cpu"))
    loss, _ = validation_loss(model, test, 16, 4, 8, torch.device("cpu"))
    assert result.val_loss == pytest.approx(loss, abs=1e-5)
    assert result.val_loss != pytest.approx(summary.final_val_loss, abs=1e-3)
    # bits per byte over the bytes of the test text those targets stand for: the windows read tokens
    # [0, 16k + 1) and score all but the first; bos and eos stand for no bytes
    tok = load_tokenizer(tok_uri)
    per_token = np.concatenate([[0, *TokenByteCounter(tok).counts(t, tok.encode(t)), 0] for t in TEST_TEXT])
    assert result.bytes_evaluated == per_token[1:result.tokens_evaluated + 1].sum() > 0
    assert result.eval_bpb == pytest.approx(result.val_loss * result.tokens_evaluated
                                            / (math.log(2) * result.bytes_evaluated))


@pytest.mark.parametrize("dataset", ["tokens-no-test", "tokens-empty-test"])
def test_evaluate_without_a_test_split_falls_back_to_validation_and_says_so(trained, dataset, caplog):
    ckpt, tokens_uri, tok_uri, summary = trained
    uri = os.path.join(os.path.dirname(tokens_uri), dataset)
    with caplog.at_level(logging.WARNING, logger="llm.eval.perplexity"):
        result = evaluate(ckpt, uri, tok_uri, EvalConfig(batches=2, prompts=["def "], max_new_tokens=2))
    assert result.split == "val"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no test split" in m and "validation" in m for m in warned), warned
    # made before the tokenize stage recorded bytes per token: no bits per byte, and a warning saying so
    assert result.eval_bpb is None and result.bytes_evaluated is None
    assert len([m for m in warned if "eval_bpb is not measured" in m]) == 1, warned
    # the same windows the training loop validated on give the same loss
    assert result.val_loss == pytest.approx(summary.final_val_loss, abs=1e-5)
    assert result.tokens_evaluated == 2 * 4 * 16


@pytest.mark.parametrize("dataset, split", [("tokens", "test"), ("tokens-no-test", "val")])
def test_evaluate_records_the_split_it_scored_in_mlflow(trained, tmp_path, dataset, split):
    from mlflow.tracking import MlflowClient

    ckpt, tokens_uri, tok_uri, _ = trained
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("eval", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp)
    evaluate(ckpt, os.path.join(os.path.dirname(tokens_uri), dataset), tok_uri,
             EvalConfig(batches=1, prompts=["def "], max_new_tokens=2), run_target=RunTarget(uri, run.info.run_id))
    assert client.get_run(run.info.run_id).data.params["eval_split"] == split
