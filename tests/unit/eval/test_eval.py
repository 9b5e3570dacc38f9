"""Evaluation of a checkpoint: perplexity = exp(loss), reproducible samples, MLflow artifact."""

import json
import math

import pytest

from llm import storage
from llm.config import EvalConfig, ModelConfig, TrainConfig
from llm.eval import evaluate
from llm.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece
from llm.tracking import RunTarget
from llm.train.data import write_token_dataset
from llm.train.loop import checkpoint_to, train

TEXT = [
    "def add(a, b):\n    return a + b\n",
    "The Python standard library has modules for files, text and numbers.\n",
    "import os\nimport sys\nprint(os.getcwd())\n",
    "def main():\n    print('hello world')\n",
] * 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    proto = train_sentencepiece(TEXT, vocab_size=400)
    tok_uri = str(root / "tokenizer.model")
    storage.write_bytes(tok_uri, proto)
    tok = SentencePieceTokenizer(proto)
    docs = [[tok.bos_id, *tok.encode(t), tok.eos_id] for t in TEXT]
    tokens_uri = str(root / "tokens")
    write_token_dataset(tokens_uri, {"train": docs, "val": docs}, vocab_size=tok.vocab_size)
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
    # the same windows the training loop validated on give the same loss
    assert a.val_loss == pytest.approx(summary.final_val_loss, abs=1e-5)
    assert a.perplexity == pytest.approx(math.exp(a.val_loss))
    assert a.tokens_evaluated == 2 * 4 * 16
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
    path = client.download_artifacts(run.info.run_id, "samples.json", str(tmp_path))
    assert json.loads(open(path).read()) == result.samples
