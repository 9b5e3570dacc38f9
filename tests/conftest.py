"""Fixtures shared by the whole suite: quiet environment, the dev data folder, one local Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Nothing here may phone home, and every server stays on loopback.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The development data folder beside the project (skips when it is not there)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"development data folder {SHARED_DATA} is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (2 CPUs, small object store, loopback only)."""
    import ray

    from llm.cluster import ensure_ray
    from llm.config import RayConfig

    ensure_ray(RayConfig(num_cpus=2, object_store_memory=128 * 1024 * 1024))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _stop_prefect_ephemeral_servers():
    """Stop Prefect's temporary API servers while pytest's output streams are still open (left to
    interpreter exit, their shutdown log line hits a closed stream)."""
    yield
    import sys

    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is not None:
        for server in list(server_module.SubprocessASGIServer._instances.values()):
            server.stop()


@pytest.fixture
def no_aws_credentials(monkeypatch, tmp_path):
    """No AWS credentials from anywhere boto3 looks (variables, files, instance metadata)."""
    from llm import storage

    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage._s3_client.cache_clear()
    yield
    storage._s3_client.cache_clear()
