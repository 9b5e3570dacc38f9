"""The data stages logged to a real MLflow tracking server over HTTP (artifacts proxied by it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm.config import build_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_data_stages_tracked_over_http(tmp_path, shared_data, ray_local, mlflow_server, monkeypatch):
    from mlflow.tracking import MlflowClient

    from flows.pipeline import data_refresh

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    cfg = build_config({}, [
        f"work_dir={tmp_path / 'work'}",
        f"tracking.uri={mlflow_server}",
        f"data.sources=[{{kind: warc, name: web, uri: '{shared_data / 'warc'}'}}, "
        "{kind: code, name: code, max_files: 30, files_per_shard: 15}]",
        "tokenizer.vocab_size=1000",
    ])
    result = data_refresh(cfg)
    assert "crawl" not in result["stages"]  # no crawl source configured: nothing fetched
    client = MlflowClient(tracking_uri=mlflow_server)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["tokenizer.vocab_size"] == "1000"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_stage = {r.data.tags["llmpipe.stage"]: r for r in children}
    assert set(by_stage) == {"ingest", "exact_dedup", "minhash_dedup", "shard", "tokenizer", "tokenize"}
    ingest = result["stages"]["ingest"]["counts"]
    metrics = by_stage["ingest"].data.metrics
    assert metrics["docs_read"] == ingest["read"] and metrics["docs_quarantined"] == ingest["quarantined"]
    assert metrics["docs_read"] == metrics["docs_kept"] + metrics["docs_dropped"] + metrics["docs_quarantined"]
    local = client.download_artifacts(by_stage["tokenizer"].info.run_id, "tokenizer/spm.model", str(tmp_path / "dl"))
    from llm.tokenizer.stage import tokenizer_uri

    assert Path(local).read_bytes() == Path(tokenizer_uri(str(tmp_path / "work" / "tokenizer"))).read_bytes()
    lineage = client.download_artifacts(by_stage["tokenize"].info.run_id, "tokenize_lineage.json", str(tmp_path / "dl"))
    chain = json.loads(Path(lineage).read_text())["chain"]
    assert [e["stage"] for e in chain][:2] == ["tokenize", "shard"] and chain[-1]["stage"] == "ingest"
    assert chain[0]["version"] == by_stage["tokenize"].data.params["version"]
    manifest = client.download_artifacts(by_stage["tokenize"].info.run_id, "tokenize_manifest.json", str(tmp_path / "dl"))
    assert '"tokens"' in Path(manifest).read_text()
