"""The Prefect-facing pieces without a server: how a flow resolves its config (file, inline, overrides),
which failures are retried, the stage artifact's markdown, MLflow run links, and the pull step."""

from __future__ import annotations

import os

import pytest

from flows.pipeline import resolve_config
from llm.config import PipelineConfig, build_config
from llm.errors import UserError
from tasks.artifacts import artifact_key, mlflow_run_url, stage_markdown
from tasks.retry import is_transient


def test_config_path_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from-file\ntrain: {max_steps: 7}\n")
    cfg = resolve_config(None, str(path), ["train.max_steps=9"])
    assert cfg.name == "from-file" and cfg.train.max_steps == 9


def test_inline_config_with_overrides_keeps_what_was_set():
    inline = build_config({"name": "inline", "train": {"max_steps": 3}})
    cfg = resolve_config(inline, None, ["train.learning_rate=0.5"])
    assert (cfg.name, cfg.train.max_steps, cfg.train.learning_rate) == ("inline", 3, 0.5)
    assert resolve_config(inline, None, None) is inline


def test_config_path_and_a_changed_inline_config_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\n")
    with pytest.raises(UserError, match="either as config_path or inline"):
        resolve_config(build_config({"name": "b"}), str(path))
    assert resolve_config(PipelineConfig(), str(path)).name == "a"  # the form's untouched defaults are fine


def test_a_missing_config_path_names_it(tmp_path):
    with pytest.raises(UserError, match="config file not found.*nope.yaml"):
        resolve_config(None, str(tmp_path / "nope.yaml"))


def test_a_bad_override_names_the_field():
    with pytest.raises(UserError, match="train.max_steps"):
        resolve_config(None, None, ["train.max_steps=many"])


class EndpointConnectionError(Exception):  # botocore's name: classified by name, not by import
    pass


class ClientError(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


def test_transient_errors_are_retried_and_bad_input_is_not():
    assert is_transient(EndpointConnectionError("s3 down"))
    assert is_transient(ConnectionResetError())
    assert is_transient(ClientError("SlowDown"))
    try:
        try:
            raise TimeoutError("read timed out")
        except TimeoutError as inner:
            raise RuntimeError("writing shard 3 failed") from inner
    except RuntimeError as wrapped:
        assert is_transient(wrapped)  # found behind the wrapper

    assert not is_transient(ValueError("bad record"))
    assert not is_transient(ClientError("AccessDenied"))
    assert not is_transient(KeyError("text"))
    try:
        try:
            raise ConnectionRefusedError()
        except ConnectionRefusedError as inner:
            raise UserError("tracking.uri http://x: cannot connect") from inner
    except UserError as user:
        assert not is_transient(user)  # a user error says what to fix: retrying only delays it


def test_stage_markdown_has_the_accounting_and_the_drop_table():
    text = stage_markdown({"stage": "ingest", "uri": "work/docs", "version": "v1", "reused": False,
                           "counts": {"read": 1200, "kept": 1000, "quarantined": 3,
                                      "dropped": {"lang": 150, "quality.short": 47}},
                           "shards": 4, "rows": 1000, "removal_rate": 0.125})
    assert "| 1,200 | 1,000 | 197 | 3 |" in text
    assert text.index("| lang | 150 |") < text.index("| quality.short | 47 |")
    assert "| removal_rate | 0.125 |" in text and "made by this run" in text


def test_artifact_keys_and_mlflow_links():
    assert artifact_key("exact_dedup", "summary") == "exact-dedup-summary"
    assert mlflow_run_url("http://127.0.0.1:5000/", "3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc"
    assert mlflow_run_url("sqlite:///x/mlflow.db", "3", "abc") is None


def test_pull_step_finds_the_installed_project_without_any_variable(tmp_path, monkeypatch):
    from flows import worker_steps

    monkeypatch.delenv("LLMPIPE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    out = worker_steps.use_project_root()
    assert os.getcwd() == out["directory"]
    assert os.path.isfile(os.path.join(out["directory"], "flows", "pipeline.py"))


def test_pull_step_prefers_llmpipe_home_and_names_a_wrong_one(tmp_path, monkeypatch):
    from flows import worker_steps

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMPIPE_HOME", str(tmp_path / "elsewhere"))
    # A wrong LLMPIPE_HOME falls back to the installed project rather than failing the run.
    assert worker_steps.project_root() != tmp_path / "elsewhere"
    checkout = tmp_path / "checkout"
    (checkout / "flows").mkdir(parents=True)
    (checkout / "flows" / "pipeline.py").write_text("")
    (checkout / "prefect.yaml").write_text("")
    monkeypatch.setenv("LLMPIPE_HOME", str(checkout))
    assert worker_steps.project_root() == checkout
