"""The default MLflow store lives under the work directory, artifacts included, whatever the current
folder is."""

from __future__ import annotations

from pathlib import Path

from llm.config import TrackingConfig
from llm.tracking import Tracker


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
