"""Running off one machine: which variables reach Ray's workers and how, and when a tracking store on
this machine's disk is refused (a Ray cluster with an s3:// work directory) or only warned about."""

from __future__ import annotations

import logging
import pickle

import cloudpickle
import pytest

from llm import tracking
from llm.cluster import FORWARDED_ENV, forwarded_env, job_runtime_env
from llm.config import TrackingConfig
from llm.errors import UserError
from llm.tracking import Tracker, check_shared_store, is_local_store

ENV = {
    "AWS_ACCESS_KEY_ID": "AKIA-test", "AWS_SECRET_ACCESS_KEY": "s3cret", "AWS_PROFILE": "team",
    "AWS_CA_BUNDLE": "/etc/ca.pem", "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "MLFLOW_TRACKING_PASSWORD": "pw", "LLMPIPE_PSEUDONYM_KEY": "k", "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # not forwarded: the node's own
    "HOME": "/root", "PATH": "/bin", "AWSOME": "x", "MLFLOWER": "y", "RAY_ADDRESS": "ray://h:10001",
}


def test_forwarded_variables_are_the_documented_prefixes_and_ray_switches_set_here():
    assert {"AWS_", "MLFLOW_", "LLMPIPE_", "RAY_USAGE_STATS_ENABLED"} <= set(FORWARDED_ENV)
    got = forwarded_env(ENV)
    assert set(got) == {k for k in ENV if k.startswith(("AWS_", "MLFLOW_", "LLMPIPE_"))} | {
        "RAY_USAGE_STATS_ENABLED", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    assert forwarded_env({"PATH": "/bin"}) == {}  # unset ones are not forwarded empty


def test_secrets_travel_in_the_setup_hook_not_in_the_logged_env_vars(monkeypatch):
    env = forwarded_env(ENV)
    for cluster in (False, True):
        runtime_env = job_runtime_env(env, cluster)
        # Ray's runtime-env agent logs env_vars: only Ray's own switches go there
        assert set(runtime_env["env_vars"]) == ({"RAY_USAGE_STATS_ENABLED"} if cluster else
                                                {"RAY_USAGE_STATS_ENABLED", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"})
        hook = runtime_env["worker_process_setup_hook"]
        assert hook.__name__ == "set_forwarded_env"  # what Ray shows of it
        assert "s3cret" not in repr(runtime_env["env_vars"]) and "s3cret" not in repr(hook)
        # what a worker runs: shipped by value, then sets the variables in the worker's environment
        for key in env:  # set, then removed: monkeypatch then undoes what the hook sets
            monkeypatch.setenv(key, "placeholder")
            monkeypatch.delenv(key)
        pickle.loads(cloudpickle.dumps(hook))()
        import os

        assert {k: os.environ.get(k) for k in env if not k.startswith("RAY_")} == {
            k: v for k, v in env.items() if not k.startswith("RAY_")}
    assert "worker_process_setup_hook" not in job_runtime_env({"RAY_USAGE_STATS_ENABLED": "0"}, cluster=True)


@pytest.mark.parametrize("uri, local", [
    ("sqlite:////tmp/mlflow.db", True), ("file:///tmp/mlruns", True), ("./mlruns", True), ("/srv/mlruns", True),
    ("http://mlflow:5000", False), ("https://user:pw@mlflow.example.com", False), ("databricks", False),
])
def test_which_tracking_uris_are_this_machines_disk(uri, local):
    assert is_local_store(uri) is local


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(tracking, "_warned", set())
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_s3_work_dir_with_a_local_store_on_a_cluster_is_refused_before_any_store_is_made(
        fresh_warnings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"ray\.address ray://head:10001: .*MLFLOW_TRACKING_URI"):
        Tracker(TrackingConfig(), "s3://bucket/work", ray_address="ray://head:10001")
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    with pytest.raises(UserError, match="RAY_ADDRESS auto"):
        Tracker(TrackingConfig(), "s3://bucket/work")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x.db")  # explicit, but still this disk
    with pytest.raises(UserError, match="sqlite:////tmp/x.db"):
        Tracker(TrackingConfig(), "s3://bucket/work")
    assert not (tmp_path / "work").exists()  # the default store (./work/mlflow) was never created


def test_a_server_a_local_work_dir_or_disabled_tracking_pass_silently(fresh_warnings, caplog, monkeypatch):
    caplog.set_level(logging.WARNING, "llm.tracking")
    check_shared_store("http://mlflow:5000", "s3://bucket/work", "ray://head:10001")
    check_shared_store("sqlite:////tmp/x.db", "/data/work", "ray://head:10001")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    Tracker(TrackingConfig(enabled=False), "s3://bucket/work")
    Tracker(TrackingConfig(uri="http://mlflow:5000"), "s3://bucket/work")
    assert not caplog.records


def test_without_a_cluster_a_local_store_for_s3_is_warned_about_once(fresh_warnings, caplog):
    caplog.set_level(logging.WARNING, "llm.tracking")
    for _ in range(3):
        check_shared_store("sqlite:////tmp/x.db", "s3://bucket/work")
    check_shared_store("sqlite:////tmp/x.db", "s3://bucket/work", "local")  # `local`: this machine
    assert len(caplog.records) == 1
    assert "one machine only" in caplog.text and "MLFLOW_TRACKING_URI" in caplog.text
