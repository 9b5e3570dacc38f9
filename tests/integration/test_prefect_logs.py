"""A flow run's logs on a real Prefect server hold what its Ray workers printed and the project's own
`llm` log lines, even where Prefect was never told about the `llm` logger (a deployment's run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.integration.data_runs import prefect_server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, logging, sys
import ray
from prefect import flow
from flows.prefect_logs import run_logs_to_prefect
from llm.cluster import ensure_ray
from llm.config import RayConfig

@ray.remote(num_cpus=1)
def shout(i):
    print(f"worker line {i} from a ray task", flush=True)
    return i

@flow(name="logs-probe")
def probe():
    from prefect.context import FlowRunContext
    with run_logs_to_prefect():
        logging.getLogger("llm.probe").info("project line: 42 documents kept")
        ensure_ray(RayConfig(num_cpus=1, object_store_memory=80_000_000))
        ray.get([shout.remote(i) for i in range(3)])
        import time
        time.sleep(3)  # Ray's log thread forwards worker output asynchronously
    return str(FlowRunContext.get().flow_run.id)

print(json.dumps({"run": probe()}))
"""


def test_ray_worker_output_and_llm_lines_reach_the_flow_run_logs(tmp_path):
    with prefect_server(tmp_path / "prefect") as api:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "prefect"), PYTHONPATH=str(REPO),
                   RAY_USAGE_STATS_ENABLED="0")
        done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        run_id = json.loads(done.stdout.strip().splitlines()[-1])["run"]
        import time

        time.sleep(2)  # the API log handler sends in batches
        logs = requests.post(f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200},
                             timeout=30).json()
    messages = [entry["message"] for entry in logs]
    assert "project line: 42 documents kept" in messages, messages
    ray_lines = [m for m in messages if "from a ray task" in m]
    assert sorted(m.split(") ", 1)[1] for m in ray_lines) == [f"worker line {i} from a ray task" for i in range(3)]
    assert all(m.startswith("(shout pid=") for m in ray_lines), ray_lines
    # Once each: the Ray lines are not also sent through the console logger.
    assert len(ray_lines) == 3
