"""`llmpipe data` killed with SIGKILL in every data stage, then run again: the rerun finishes and its
work directory is byte for byte that of a run never interrupted.

Each kill waits for an event in the work directory (polled every few milliseconds, not a timer): a
file a stage writes partway through its work, or a stage's result just before its version is
recorded. The whole process tree goes (the command and Ray's processes), as when the machine loses
the run; the killed run's work-directory lock stays behind and the rerun takes it over. The runs share
one Prefect server: a temporary API per run would add several seconds to each of the fifteen.

A killed run starts where a run reaching the stage would be: with the stages before it as the
uninterrupted run left them (they were shown to resume identically at their own kill points). That
keeps each kill to the stage it tests and the whole test to a few minutes on 2 cores.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.data_runs import data_command, kill_tree, prefect_server, run_env, run_to_completion
from tests.text_site import text_site
from tests.trees import output_tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Each stage's folder under the work directory, in pipeline order.
STAGE_DIRS = {
    "crawl": "raw/crawl",
    "ingest": "datasets/docs",
    "exact_dedup": "datasets/dedup",
    "minhash_dedup": "datasets/near_dedup",
    "shard": "datasets/shards",
    "tokenizer": "tokenizer",
    "tokenize": "tokens",
}

# (stage, pattern under the work directory whose first match triggers the kill, what it means)
KILL_POINTS = [
    ("crawl", "raw/crawl/crawl-*.warc.gz", "the first of seven WARC files: mid-crawl"),
    ("ingest", "datasets/docs/_shards/*.json", "the first finished ingest shard"),
    ("exact_dedup", "datasets/dedup/_work", "hashes written, duplicates being grouped"),
    ("minhash_dedup", "datasets/near_dedup/_work/*/bands", "signatures being cut into LSH bands"),
    ("shard", "datasets/shards/_shards/*.json", "the first of three output shards"),
    ("tokenizer", "tokenizer/spm-*.model", "the trained model, before its version is recorded"),
    ("tokenize", "tokens/_shards/*.json", "the first finished token shard"),
]

POLL_S = 0.005


def _start_state(clean: Path, work: Path, stage: str) -> None:
    """`work` as a run is when it reaches `stage`: the earlier stages' folders as the clean run left them."""
    for earlier in list(STAGE_DIRS)[: list(STAGE_DIRS).index(stage)]:
        shutil.copytree(clean / STAGE_DIRS[earlier], work / STAGE_DIRS[earlier])


def _kill_on(proc: subprocess.Popen, work: Path, pattern: str, log: Path, timeout: float = 300) -> str:
    """Poll `work` until `pattern` matches, then kill the run's process tree; returns the match."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = next(work.glob(pattern), None)
        if match is not None:
            kill_tree(proc)
            return str(match.relative_to(work))
        if proc.poll() is not None:
            output = log.read_text(errors="replace")[-3000:]
            pytest.fail(f"the run ended (exit {proc.returncode}) before {pattern} appeared:\n{output}")
        time.sleep(POLL_S)
    kill_tree(proc)
    pytest.fail(f"{pattern} did not appear within {timeout:.0f}s")


def _differences(expected: dict[str, bytes], got: dict[str, bytes]) -> dict[str, list[str]]:
    return {"missing": sorted(expected.keys() - got.keys()), "extra": sorted(got.keys() - expected.keys()),
            "changed": sorted(p for p in expected.keys() & got.keys() if expected[p] != got[p])}


def test_a_run_killed_in_any_data_stage_reruns_to_identical_output(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    with prefect_server(tmp_path / "prefect-server") as api, text_site() as site:
        env = run_env(tmp_path, api)
        run_to_completion(data_command(site, clean), env)
        expected = output_tree(clean)
        assert not (clean / "_lock.json").exists()

        for stage, pattern, _meaning in KILL_POINTS:
            work = tmp_path / f"killed-in-{stage}"
            _start_state(clean, work, stage)
            cmd = data_command(site, work)
            log = tmp_path / f"killed-in-{stage}.log"
            with open(log, "wb") as out:  # a file, not a pipe: nobody reads while the run goes on
                proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            seen = _kill_on(proc, work, pattern, log)
            assert (work / "_lock.json").exists(), f"{stage}: the killed run held the work directory's lock"
            assert output_tree(work) != expected, f"{stage}: killed at {seen}, the run had already finished"

            rerun = run_to_completion(cmd, env)
            assert "taking over the stale lock" in rerun.stderr and f"pid {proc.pid}" in rerun.stderr, \
                f"{stage}: the rerun should report taking over the killed run's lock:\n{rerun.stderr[-2000:]}"
            got = output_tree(work)
            assert _differences(expected, got) == {"missing": [], "extra": [], "changed": []}, \
                f"killed in {stage} at {seen}: the rerun's output differs from the uninterrupted run's"
