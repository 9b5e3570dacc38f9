"""A run on Prefect's temporary API completes with every core busy, the API's first start included
(it creates its database then). With Prefect's own 20 s start-up timeout, the same run on a 2-core
machine under this load (two spinning processes per core) failed before the flow began."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

FLOW = """
from prefect import flow
from flows.pipeline import local_run_settings

@flow
def add_one(x: int) -> int:
    return x + 1

with local_run_settings():
    print("result", add_one(41))
"""


def test_a_flow_run_completes_while_every_core_is_busy(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    # A home of its own: a temporary API started afresh, which must create and migrate its database.
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PYTHONPATH=str(REPO))
    busy = 2 * (os.cpu_count() or 1)
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        run = subprocess.run([sys.executable, "-c", FLOW], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=420)
    finally:
        for proc in spinners:
            proc.kill()
        for proc in spinners:
            proc.wait()
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "result 42" in run.stdout
