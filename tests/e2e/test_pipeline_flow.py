"""The whole flow on a tiny config: a real local pydoc crawl, the stdlib code source, Ray, Prefect's
ephemeral API and an MLflow SQLite store, ending with a LoRA fine-tune; then every record is read back."""

from __future__ import annotations

import json
import math

import pytest

from llm import storage
from llm.config import build_config
from llm.data.dataset import read_manifest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TINY = [
    "name=tiny",
    "data.crawl.max_pages=24",
    "data.crawl.records_per_warc=8",
    "data.sources=[{kind: crawl, name: web}, {kind: code, name: code, max_files: 40, files_per_shard: 10}]",
    "data.shard.target_bytes=200000",
    "tokenizer.vocab_size=512",
    "model.layers=1", "model.hidden_size=32", "model.attention_heads=2", "model.context_length=64",
    "train.num_workers=2", "train.batch_size=16", "train.micro_batch_size=8", "train.max_steps=40",
    "train.warmup_steps=5", "train.eval_every=20", "train.eval_batches=2", "train.checkpoint_every=20",
    "train.log_every=5", "train.learning_rate=0.01",
    "eval.batches=4", "eval.max_new_tokens=8",
    "finetune.train.num_workers=2", "finetune.train.batch_size=8", "finetune.train.micro_batch_size=4",
    "finetune.train.max_steps=10", "finetune.train.eval_every=10", "finetune.train.checkpoint_every=10",
    "finetune.train.eval_batches=2", "finetune.train.log_every=5", "finetune.train.learning_rate=0.01",
    "finetune.sample_tokens=8",
    "ray.object_store_memory=134217728",
]


@pytest.fixture()
def prefect_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return tmp_path / "prefect"


def test_pipeline_flow_end_to_end(tmp_path, ray_local, prefect_home):
    from mlflow.tracking import MlflowClient

    from flows.pipeline import local_run_settings, pipeline
    from llm.summary import format_summary

    cfg = build_config({}, TINY + [f"work_dir={tmp_path / 'work'}"])
    # As `llmpipe run` calls it: the temporary API gets the project's start-up time, not Prefect's 20 s,
    # which a first start (creating its database) can exceed on a busy 2-core machine.
    with local_run_settings():
        result = pipeline(cfg)
    stages = result["stages"]
    assert list(stages) == ["crawl", "ingest", "exact_dedup", "minhash_dedup", "shard", "tokenizer", "tokenize",
                            "pretrain", "evaluate", "finetune"]

    # accounting on every document stage, and each stage reads exactly what the previous kept
    ingest = stages["ingest"]["counts"]
    assert ingest["read"] > 24 and ingest["kept"] > 0
    previous_kept = None
    for name in ["ingest", "exact_dedup", "minhash_dedup", "shard"]:
        c = stages[name]["counts"]
        assert c["read"] == c["kept"] + sum(c["dropped"].values()) + c["quarantined"], name
        if previous_kept is not None:
            assert c["read"] == previous_kept, name
        previous_kept = c["kept"]
    work = tmp_path / "work"
    web = read_manifest(str(work / "datasets" / "docs"))
    assert any(s["name"].startswith("web-") for s in web["shards"])
    assert any(s["name"].startswith("code-") for s in web["shards"])

    # training learned something and evaluation agrees with the checkpoint
    pre, ev = stages["pretrain"], stages["evaluate"]
    assert pre["final_val_loss"] < pre["initial_val_loss"] - 0.5
    assert math.isclose(ev["perplexity"], math.exp(ev["val_loss"]), rel_tol=1e-6)
    assert ev["split"] == "test" and stages["tokenize"]["test_tokens"] > 0  # not the split early stopping used
    assert storage.exists(storage.join(pre["checkpoint_uri"], "model.pt"))

    # MLflow: parent run, one nested run per stage, metrics and artifacts readable over the client
    client = MlflowClient(tracking_uri=result["tracking_uri"])
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["train.max_steps"] == "40"
    exp = parent.info.experiment_id
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_stage = {r.data.tags["llmpipe.stage"]: r for r in children}
    assert set(by_stage) == set(stages)
    assert by_stage["ingest"].data.metrics["docs_read"] == ingest["read"]
    history = client.get_metric_history(by_stage["pretrain"].info.run_id, "loss")
    assert len(history) >= 4 and history[-1].value < history[0].value
    for name in ("lr", "grad_norm", "tokens_per_s"):
        assert client.get_metric_history(by_stage["pretrain"].info.run_id, name), name
    tok_artifacts = [a.path for a in client.list_artifacts(by_stage["tokenizer"].info.run_id, "tokenizer")]
    assert "tokenizer/spm.model" in tok_artifacts and "tokenizer/card.json" in tok_artifacts
    assert by_stage["evaluate"].data.params["eval_split"] == "test"
    eval_artifacts = {a.path for a in client.list_artifacts(by_stage["evaluate"].info.run_id)}
    assert any("sample" in p for p in eval_artifacts), eval_artifacts

    # Fine-tuning: LoRA on signature -> docstring pairs built from the crawled pages, adapter-only checkpoint,
    # before/after response loss, samples and the registered model in MLflow.
    ft = stages["finetune"]
    assert ft["method"] == "lora" and ft["steps"] == 10 and ft["doc_pairs_pairs"] > 0
    assert ft["examples_read"] == ft["examples_kept"] + ft["examples_quarantined"]
    assert ft["response_loss_after"] < ft["response_loss_before"]
    assert storage.exists(storage.join(ft["checkpoint_uri"], "adapter.pt"))
    assert not storage.exists(storage.join(ft["checkpoint_uri"], "model.pt"))
    assert ft["checkpoint_bytes"] < ft["base_bytes"]
    ft_run = by_stage["finetune"]
    assert ft_run.data.metrics["response_loss_after"] == pytest.approx(ft["response_loss_after"])
    assert {a.path for a in client.list_artifacts(ft_run.info.run_id, "finetune")} >= {"finetune/samples.json"}
    assert client.get_model_version_by_alias("llmpipe-gpt-sft", "current").run_id == ft_run.info.run_id
    assert client.get_model_version_by_alias("llmpipe-gpt", "current").run_id == by_stage["pretrain"].info.run_id

    text = format_summary(result)
    assert "held-out response loss" in text
    assert "mlflow ui --backend-store-uri" in text and "perplexity" in text
    assert json.loads((work / "eval" / "eval.json").read_text())["val_loss"] == ev["val_loss"]

    # Identity: a training setting reruns only training and evaluation; nothing changed skips it all
    data_versions = {name: stages[name]["version"] for name in stages}
    shorter = pipeline(build_config({}, TINY + [f"work_dir={work}", "train.max_steps=30"]))["stages"]
    reran = sorted(n for n in shorter if shorter[n]["version"] != data_versions[n])
    assert reran == ["evaluate", "finetune", "pretrain"] and shorter["pretrain"]["steps"] == 30
    assert all(shorter[n]["reused"] for n in shorter if n not in reran)
    before = {p: p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file() and "mlflow" not in p.parts}
    rerun = pipeline(build_config({}, TINY + [f"work_dir={work}", "train.max_steps=30"]))
    same = rerun["stages"]
    assert all(s["reused"] for s in same.values())
    assert "made: nothing" in format_summary(rerun)
    assert {p: p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file() and "mlflow" not in p.parts} == before
    # gc removes the first run's training and evaluation, and nothing the current versions need
    from llm.gc import run_gc

    removed = run_gc(str(work), apply=True).files
    assert removed and any("/train/runs/" in f for f in removed)
    after_gc = pipeline(build_config({}, TINY + [f"work_dir={work}", "train.max_steps=30"]))["stages"]
    assert all(s["reused"] for s in after_gc.values())
    assert json.loads((work / "eval" / "eval.json").read_text())["val_loss"] == shorter["evaluate"]["val_loss"]
    # each stage's MLflow run holds the lineage chain behind its output
    run = client.get_run(result["parent_run_id"])
    tokenize_run = by_stage["tokenize"]
    path = client.download_artifacts(tokenize_run.info.run_id, "tokenize_lineage.json", str(tmp_path / "dl"))
    chain = json.loads(open(path).read())["chain"]
    assert chain[0]["version"] == stages["tokenize"]["version"] and chain[-1]["stage"] == "crawl"
    assert run.info.status == "FINISHED"
