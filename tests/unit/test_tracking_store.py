"""The default MLflow store lives under the work directory, artifacts included, whatever the current
folder is."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from llm.config import TrackingConfig
from llm.tracking import Tracker

REPO = Path(__file__).resolve().parents[2]


def test_default_store_keeps_artifacts_under_the_work_dir(tmp_path, monkeypatch):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    work = tmp_path / "work"
    tracker = Tracker(TrackingConfig(), str(work))
    run = tracker.start_run("r")
    note = tmp_path / "note.txt"
    note.write_text("hello")
    run.log_artifact(str(note), "notes")
    tracker.finish(run)
    assert not (elsewhere / "mlruns").exists() and not list(elsewhere.iterdir())
    stored = list((work / "mlflow" / "artifacts").rglob("note.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "hello"
    assert Path(tracker.uri.removeprefix("sqlite:///")) == work / "mlflow" / "mlflow.db"


# Creates the default store of the work directory argv[1] and starts a run in it; with argv[2], first
# waits for that file to appear, so several of these start at the same moment.
CREATE = """
import os, sys, time
from llm.config import TrackingConfig
from llm.tracking import Tracker

if len(sys.argv) > 2:
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.005)
tracker = Tracker(TrackingConfig(), sys.argv[1])
run = tracker.start_run(f"run-{os.getpid()}")
tracker.finish(run)
print(tracker.uri, tracker.experiment_id())
"""


def _creator(work: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CREATE, str(work), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_store_creation_killed_half_way_leaves_a_work_dir_that_reruns(tmp_path):
    work = tmp_path / "work"
    store = work / "mlflow"
    proc = _creator(work)
    deadline = time.time() + 60
    while not list(store.glob("mlflow.db.tmp-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    # Killed while it built the database: nothing under the real name, a temporary file left behind.
    assert not (store / "mlflow.db").exists()
    assert list(store.glob("mlflow.db.tmp-*"))

    tracker = Tracker(TrackingConfig(), str(work))
    run = tracker.start_run("rerun")
    tracker.finish(run)
    assert tracker.client().get_run(run.run_id).info.status == "FINISHED"
    assert sorted(p.name for p in store.iterdir() if p.name.startswith("mlflow.db")) == \
        ["mlflow.db", "mlflow.db.lock"]


def test_concurrent_starts_share_one_store(tmp_path):
    from mlflow.tracking import MlflowClient

    work = tmp_path / "work"
    go = tmp_path / "go"
    procs = [_creator(work, str(go)) for _ in range(3)]
    time.sleep(1.0)  # every interpreter up and waiting
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    answers = {out.strip() for out, _ in outputs}
    assert len(answers) == 1  # one URI, one experiment
    uri, experiment = answers.pop().split()
    assert uri == f"sqlite:///{work / 'mlflow' / 'mlflow.db'}"
    runs = MlflowClient(tracking_uri=uri).search_runs([experiment])
    assert len(runs) == 3
    assert not list((work / "mlflow").glob("mlflow.db.tmp-*"))


def test_the_default_experiment_keeps_its_artifacts_under_the_work_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    tracker = Tracker(TrackingConfig(), str(work))
    default = tracker.client().get_experiment("0")
    assert default.artifact_location == (work / "mlflow" / "artifacts" / "0").as_uri()
