"""The data stages write the same bytes on a busy machine as on a quiet one: nothing a stage keeps,
drops or quarantines may depend on how long its work took."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from llm.config import build_config
from tests.integration.data_runs import TINY
from tests.text_site import crawl_on_ray_with_pinned_clock, pin_crawl_clock, text_site
from tests.trees import output_tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Fewer, larger shards than the tiny config: on a machine this busy every Ray task costs many times its
# usual scheduling delay, and the point is the stages' output, not their number of tasks.
FEWER_SHARDS = [
    "data.crawl.records_per_warc=8",
    "data.sources=[{kind: crawl, name: web}, {kind: code, name: code, max_files: 4, files_per_shard: 4}]",
    "data.shard.target_bytes=30000",
]


@contextmanager
def busy_cpus(count: int) -> Iterator[None]:
    """`count` processes spinning on the CPU for the duration of the block, stopped by PID after."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in spinners:
            proc.kill()
        for proc in spinners:
            proc.wait()


def _ingest_counts(work: Path) -> dict:
    return json.loads((work / "datasets" / "docs" / "_manifest.json").read_text())["totals"]["counts"]


def test_a_busy_machine_writes_the_same_output_as_a_quiet_one(tmp_path: Path, ray_local, monkeypatch) -> None:
    # In this process, on the session's Ray: one temporary Prefect API and one Ray for both runs, so
    # the time goes to the stages themselves (test_kill_rerun runs the `llmpipe` command itself).
    from flows.pipeline import data_refresh, local_run_settings

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    crawl_on_ray_with_pinned_clock(monkeypatch)  # the crawl runs in a Ray worker: pinned there too
    quiet, busy = tmp_path / "quiet", tmp_path / "busy"
    with text_site() as site:
        for work in (quiet, busy):
            pin_crawl_clock(monkeypatch)  # record ids numbered from the start in each run
            cfg = build_config({}, TINY + FEWER_SHARDS + [f"data.crawl.start_url={site}", f"work_dir={work}"])
            spinners = 2 * (os.cpu_count() or 1) if work == busy else 0
            with local_run_settings(), busy_cpus(spinners):
                data_refresh(cfg)

    a, b = output_tree(quiet), output_tree(busy)
    assert sorted(a.keys() ^ b.keys()) == []
    assert [path for path in a if a[path] != b[path]] == []
    # the large table page takes real CPU to extract; neither run gave up on it
    counts = _ingest_counts(quiet)
    assert counts["quarantined"] == 0 and counts["kept"] > 0, counts
