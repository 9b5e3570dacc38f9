import subprocess
import sys
from pathlib import Path

import yaml

from flows.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_config_command_prints_resolved_config(capsys):
    assert main(["config", str(REPO / "configs" / "demo.yaml"), "train.max_steps=7"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["train"]["max_steps"] == 7 and resolved["model"]["layers"] == 4


def test_overrides_without_config_file(capsys):
    assert main(["config", "train.max_steps=3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["max_steps"] == 3


def test_bad_config_is_one_clear_message_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: -0.1\nunknown_section: {}\n")
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(bad)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "train.learning_rate" in proc.stderr and "unknown_section: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_every_stage_has_a_subcommand():
    from flows.cli import STAGE_HELP
    from flows.pipeline import STAGES

    assert set(STAGE_HELP) == set(STAGES)


def test_a_local_run_gives_the_temporary_api_time_to_start_on_a_busy_machine(monkeypatch):
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as startup

    from flows.pipeline import local_run_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    with local_run_settings():
        assert startup.value() >= 120  # Prefect's 20 s ran out with every core busy
