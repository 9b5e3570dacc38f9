"""The parts of infra/ and docker/ that run without Docker, run for real: MLflow's server with the
allowed hosts the image sets answers the names clients use and refuses others, and the compose stack's
bucket-creating one-shot creates its buckets on an S3-compatible endpoint, twice without harm."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, stop, wait_for_port
from tests.unit.infra_files import INFRA, MLFLOW_DOCKERFILE, env_settings, load_compose, service_env

pytestmark = pytest.mark.integration


def _get(port: int, path: str, host: str) -> tuple[int, str]:
    """GET `path` from 127.0.0.1:`port`, sending `host` as the Host header a client of that name sends."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def test_mlflow_allowed_hosts_answer_clients_and_refuse_strangers(tmp_path):
    allowed = env_settings(MLFLOW_DOCKERFILE)["MLFLOW_SERVER_ALLOWED_HOSTS"]
    compose_allowed = service_env(load_compose()["services"]["mlflow"])["MLFLOW_SERVER_ALLOWED_HOSTS"]
    port = free_port()
    log = open(tmp_path / "mlflow.log", "wb")
    # The image's flags, on loopback and SQLite instead of 0.0.0.0 and Postgres.
    env = {**os.environ, "MLFLOW_SERVER_ALLOWED_HOSTS": allowed}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--serve-artifacts", "--artifacts-destination", str(tmp_path / "artifacts"),
         "--allowed-hosts", allowed],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_port(port, proc, timeout=120)
        api = "/api/2.0/mlflow/experiments/search?max_results=1"
        for host in ("mlflow:5000", "mlflow", "mlflow-host:5000", "localhost:5000", f"127.0.0.1:{port}"):
            status, body = _get(port, api, host)
            assert status == 200, f"Host {host}: {status} {body[:200]}"
        for host in ("evil.example", "evil.example:5000", "mlflow.evil.example:5000"):
            status, body = _get(port, api, host)
            assert status == 403 and "Invalid Host header" in body, f"Host {host}: {status}"
        # health probes pass whatever the Host
        assert _get(port, "/health", "evil.example")[0] == 200
    finally:
        stop(proc)
        log.close()
    # compose's setting lets in the compose name and the host's loopback
    from mlflow.server.security_utils import is_allowed_host_header

    hosts = [h.strip() for h in compose_allowed.split(",")]
    assert all(is_allowed_host_header(hosts, h) for h in ("mlflow:5000", "127.0.0.1:5000", "localhost:5000"))


def test_create_buckets_makes_missing_buckets_once(s3_endpoint):
    import boto3

    script = INFRA / "create-buckets.py"
    run = [sys.executable, str(script), "mlflow-artifacts", "llmpipe-data", "llmpipe-test"]
    first = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.split("\n")[:3] == ["mlflow-artifacts: created", "llmpipe-data: created", "llmpipe-test: exists"]
    names = {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]}
    assert {"mlflow-artifacts", "llmpipe-data", "llmpipe-test"} <= names
    again = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.count(": exists") == 3, again.stdout + again.stderr
    # no bucket named: a usage error, not a silent success
    assert subprocess.run([sys.executable, str(script)], capture_output=True).returncode == 2
