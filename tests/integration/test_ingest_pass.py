"""The fused ingest pass on real WARC files and real source code: Ray vs in-process, a killed run
resumed, and bad input quarantined with nothing lost."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from llm.config import build_config
from llm.data.ingest import run_ingest
from llm.executor import LocalExecutor, RayExecutor
from tests.trees import output_tree

pytestmark = pytest.mark.integration


def _cfg(warc_dir: str, code_files: int = 60, per_shard: int = 20):
    return build_config({}, [f"data.sources=[{{kind: warc, name: web, uri: '{warc_dir}'}}, "
                             f"{{kind: code, name: code, max_files: {code_files}, files_per_shard: {per_shard}}}]"])


def test_ray_and_local_runs_are_byte_identical(tmp_path, shared_data, ray_local):
    cfg = _cfg(str(shared_data / "warc"))
    m_ray = run_ingest(cfg, "", str(tmp_path / "ray"), RayExecutor())
    m_local = run_ingest(cfg, "", str(tmp_path / "local"), LocalExecutor())
    assert m_ray == m_local
    a, b = output_tree(tmp_path / "ray"), output_tree(tmp_path / "local")
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []
    c = m_ray["totals"]["counts"]
    assert c["read"] == c["kept"] + sum(c["dropped"].values()) + c["quarantined"]
    assert c["quarantined"] >= 1  # the sample archive has deliberately broken files
    for shard in m_ray["shards"]:
        shard_counts = shard["counts"]
        rows = pq.read_table(tmp_path / "ray" / shard["files"]["data"]).num_rows
        assert rows == shard_counts["kept"] == shard["rows"]
        if "rejected" in shard["files"]:
            assert pq.read_table(tmp_path / "ray" / shard["files"]["rejected"]).num_rows == sum(shard_counts["dropped"].values())
        if "quarantine" in shard["files"]:
            entries = pq.read_table(tmp_path / "ray" / shard["files"]["quarantine"])
            assert sum(entries.column("records").to_pylist()) == shard_counts["quarantined"]  # records, not entries


_RUNNER = """
import sys
from llm.config import build_config
from llm.data.ingest import run_ingest
from llm.executor import LocalExecutor
cfg = build_config({}, [sys.argv[1]])
run_ingest(cfg, "", sys.argv[2], LocalExecutor())
"""


def test_killed_run_resumes_to_identical_output(tmp_path, shared_data):
    source = "data.sources=[{kind: code, name: code, max_files: 600, files_per_shard: 10}]"
    cfg = build_config({}, [source])
    ref = tmp_path / "ref"
    run_ingest(cfg, "", str(ref), LocalExecutor())
    total = len(list((ref / "_shards").glob("*.json")))
    assert total >= 30

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, source, str(out)])
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "_shards").glob("*.json"))) < 5:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name for p in (out / "_shards").glob("*.json")}
    assert 5 <= len(finished) < total, "the run should have been killed partway"
    assert not (out / "_manifest.json").exists()
    before = {name: (out / "_shards" / name).stat().st_mtime_ns for name in finished}

    run_ingest(cfg, "", str(out), LocalExecutor())
    after = {name: (out / "_shards" / name).stat().st_mtime_ns for name in finished}
    assert before == after  # finished shards were not redone
    a, b = output_tree(ref), output_tree(out)
    assert a.keys() == b.keys() and [k for k in a if a[k] != b[k]] == []


def test_bad_input_is_quarantined_and_counted(tmp_path, shared_data):
    inputs = tmp_path / "in"
    inputs.mkdir()
    whole = (shared_data / "warc" / "iana.warc.gz").read_bytes()
    (inputs / "truncated.warc.gz").write_bytes(whole[: len(whole) // 3])
    (inputs / "empty.warc.gz").write_bytes(b"")
    jsonl = inputs / "docs.jsonl"
    jsonl.write_text('{"text": "a fine document"}\n{"text": broken json\n\n{"no_text": 1}\n{"text": "another one"}\n')
    code = tmp_path / "code"
    code.mkdir()
    (code / "latin.py").write_bytes("# café\nx = 'é'\n".encode("latin-1"))
    (code / "garbage.py").write_bytes(bytes(range(256)) * 8 + b"\x00" * 512)
    (code / "empty.py").write_bytes(b"")
    (code / "ok.py").write_text("def f():\n    return 1\n")
    cfg = build_config({}, [
        f"data.sources=[{{kind: warc, name: web, uri: '{inputs}'}}, {{kind: jsonl, name: j, uri: '{jsonl}'}}, "
        f"{{kind: code, name: code, uri: '{code}'}}]"])
    m = run_ingest(cfg, "", str(tmp_path / "out"), LocalExecutor())
    c = m["totals"]["counts"]
    assert c["read"] == c["kept"] + sum(c["dropped"].values()) + c["quarantined"]
    quarantine = [r for s in m["shards"] if "quarantine" in s["files"]
                  for r in pq.read_table(tmp_path / "out" / s["files"]["quarantine"]).to_pylist()]
    errors = " | ".join(r["error"] for r in quarantine)
    locations = [r["location"] for r in quarantine]
    assert any("truncated.warc.gz" in loc for loc in locations), errors
    assert any("empty.warc.gz" in loc for loc in locations), errors
    assert sum("docs.jsonl" in loc for loc in locations) == 2, errors  # broken line + missing field
    assert any("garbage.py" in loc for loc in locations), errors
    kept = [r for s in m["shards"] for r in pq.read_table(tmp_path / "out" / s["files"]["data"]).to_pylist()]
    texts = {r["text"] for r in kept}
    assert {"a fine document", "another one"} <= texts
    assert any("café" in t for t in texts)  # latin-1 source decoded, not lost
    assert any(r["url"] and r["url"].startswith("http") for r in kept)  # the truncated WARC's intact records
