"""Stage tasks retry transient infrastructure errors and nothing else, on Prefect's real engine (its
temporary API, a home of its own): an S3 endpoint that drops the connection once is retried and the stage
completes; a user error or a bug fails after one attempt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json
from prefect import flow
from llm.errors import UserError
from tasks.runtime import stage_task

calls = {"transient": 0, "user": 0, "bug": 0}

class EndpointConnectionError(Exception):  # botocore's class name
    pass

def make(kind):
    @stage_task(kind)
    def body():
        calls[kind] += 1
        if kind == "transient" and calls[kind] == 1:
            raise EndpointConnectionError("Could not connect to the endpoint URL")
        if kind == "user":
            raise UserError("data.sources[0].path: no such folder")
        if kind == "bug":
            raise KeyError("text")
        return "ok"
    return body.with_options(retry_delay_seconds=0, retry_jitter_factor=None)

@flow
def probe():
    out = {}
    for kind in calls:
        state = make(kind)(return_state=True)
        out[kind] = state.type.value
    return out

states = probe()
print(json.dumps({"states": states, "calls": calls}))
"""


def test_only_transient_errors_are_retried(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300",
               PYTHONPATH=str(REPO), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["states"] == {"transient": "COMPLETED", "user": "FAILED", "bug": "FAILED"}
    assert result["calls"] == {"transient": 2, "user": 1, "bug": 1}
