"""A run on Prefect's temporary API gets time to start it and to lock its database on a busy machine;
what a user set stays, and a run against a server is left as it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# What the temporary API's process is given: the settings as environment variables.
SHOW = """
import json
from prefect.settings import get_current_settings
from flows.pipeline import local_run_settings

with local_run_settings():
    env = get_current_settings().to_environment_variables(exclude_unset=True)
print(json.dumps({k: env.get(k) for k in ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
                                          "PREFECT_SERVER_DATABASE_TIMEOUT",
                                          "PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT")}))
"""


def _settings() -> tuple[int, float | None, float | None, object]:
    from prefect.settings import get_current_settings

    s = get_current_settings()
    db = s.server.database
    return s.server.ephemeral.startup_timeout_seconds, db.timeout, db.connection_timeout, s.flows.heartbeat_frequency


def test_unset_timeouts_get_generous_values(monkeypatch):
    from flows.pipeline import local_run_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with local_run_settings():
        startup, db_timeout, connect_timeout, heartbeat = _settings()
    assert startup >= 300 and db_timeout >= 60 and connect_timeout >= 60
    assert heartbeat is None


def test_values_the_user_set_stay(monkeypatch):
    from prefect.settings import (PREFECT_SERVER_DATABASE_TIMEOUT, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                                  temporary_settings)

    from flows.pipeline import local_run_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    # As from a profile: set before the run starts.
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 7,
                                     PREFECT_SERVER_DATABASE_TIMEOUT: 3.0}):
        with local_run_settings():
            startup, db_timeout, connect_timeout, _ = _settings()
    assert (startup, db_timeout) == (7, 3.0)
    assert connect_timeout >= 60  # the one left unset still gets its value


def test_environment_variables_the_user_set_stay_and_reach_the_temporary_api():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # An older name of the database timeout counts as the user's value too.
    env.update(PYTHONPATH=str(REPO), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="7",
               PREFECT_API_DATABASE_TIMEOUT="3")
    given = subprocess.run([sys.executable, "-c", SHOW], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=120)
    assert given.returncode == 0, given.stderr
    assert json.loads(given.stdout.splitlines()[-1]) == {
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "7",
        "PREFECT_SERVER_DATABASE_TIMEOUT": "3.0",
        "PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT": "60.0",
    }


def test_a_run_against_a_server_is_left_alone(monkeypatch):
    from prefect.settings import get_current_settings

    from flows.pipeline import local_run_settings

    before = get_current_settings().model_dump()
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    with local_run_settings():
        assert get_current_settings().model_dump() == before
