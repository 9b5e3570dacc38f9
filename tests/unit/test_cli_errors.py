"""User-caused errors of `llmpipe` are one line on stderr and exit status 2, wherever they are raised
(the CLI, a Prefect flow or task, a Ray task, a Ray Train worker); bugs keep their traceback (exit 1);
`--debug` shows the traceback of any error."""

from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import _UserErrorRecords, main
from llm.errors import InputNotFound, UserError, user_cause

REPO = Path(__file__).resolve().parents[2]
LLMPIPE = Path(sys.executable).parent / "llmpipe"


def _closed_port() -> int:
    """A loopback port nothing listens on: bound by the OS, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmpipe: error: "), err
    return lines[0]


def _run_cli(args: list[str], env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    return subprocess.run([str(LLMPIPE), *args], capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env={**base, **(env or {})})


def _latin1_config(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    return path


# ------------------------------------------------------------------------------------- config file


def test_a_config_that_is_not_utf8_is_one_line_exit_2_from_the_console_script(tmp_path):
    proc = _run_cli(["run", str(_latin1_config(tmp_path))], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
    assert "latin1.yaml: not UTF-8 text" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


def test_a_config_path_that_is_a_folder(tmp_path, capsys):
    assert main(["config", str(tmp_path)]) == 2
    assert f"{tmp_path}: is a folder" in _error_line(capsys)


def test_an_unreadable_config_file(tmp_path, capsys, monkeypatch):
    path = tmp_path / "locked.yaml"
    path.write_text("name: x\n")
    real_read_text = Path.read_text

    def read_text(self, *args, **kwargs):
        # Permissions do not stop root, so the refusal is the filesystem's answer, made here.
        if self == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    assert main(["config", str(path)]) == 2
    assert _error_line(capsys) == f"llmpipe: error: {path}: cannot read the config file (Permission denied)"


def test_several_config_problems_are_one_line_naming_each_field(capsys):
    assert main(["config", "train.learning_rate=-1", "bogus=1"]) == 2
    line = _error_line(capsys)
    assert "train.learning_rate: Input should be greater than 0" in line and "bogus: unknown key" in line


def test_a_secret_value_is_never_echoed(capsys):
    assert main(["config", "data.pii.pseudonym_key=[hunter2"]) == 2
    line = _error_line(capsys)
    assert "data.pii.pseudonym_key" in line and "hunter2" not in line
    assert main(["config", "data.pii.pseudonym_key=918273645"]) == 2
    line = _error_line(capsys)
    assert "data.pii.pseudonym_key" in line and "918273645" not in line


def test_debug_adds_the_traceback_and_keeps_exit_2(tmp_path, capsys, monkeypatch):
    config = str(_latin1_config(tmp_path))
    for argv in (["--debug", "config", config], ["config", config, "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.splitlines()[-1].startswith("llmpipe: error: ")
    monkeypatch.setenv("LLMPIPE_DEBUG", "1")
    assert main(["config", config]) == 2
    assert "Traceback" in capsys.readouterr().err


# ------------------------------------------------------------------------------- dataset arguments


@pytest.mark.parametrize("argv", [["explain", "{p}", "doc-1"], ["stats", "{p}"], ["lineage", "{p}"],
                                  ["lineage", "{p}@v1"], ["gc", "{p}"]])
def test_a_dataset_or_work_dir_that_is_not_there(tmp_path, capsys, argv):
    missing = tmp_path / "nope"
    assert main([a.format(p=missing) for a in argv]) == 2
    assert str(missing) in _error_line(capsys)
    assert not missing.exists()  # gc did not create it


def test_a_file_given_as_a_dataset(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["lineage", str(a_file)]) == 2
    assert f"{a_file}: no _manifest.json" in _error_line(capsys)


# ------------------------------------------------------------------------------------------ inputs


def _config(tmp_path: Path, *overrides: str):
    from llm.config import build_config

    return build_config({}, [f"work_dir={tmp_path / 'work'}", "tracking.enabled=false", *overrides])


def test_no_sources_and_a_missing_source_are_user_errors_at_ingest(tmp_path):
    from llm.data.ingest import run_ingest
    from llm.layout import Layout

    for overrides, message in [(["data.sources=[]"], "data.sources is empty"),
                               ([f"data.sources=[{{kind: jsonl, name: books, uri: {tmp_path / 'none'}}}]"],
                                f"{tmp_path / 'none'} does not exist")]:
        cfg = _config(tmp_path, *overrides)
        layout = Layout.for_work_dir(cfg.work_dir)
        with pytest.raises(UserError, match=message):
            run_ingest(cfg, layout.crawl, layout.docs, executor=None)


def test_s3_work_dir_without_credentials_names_the_bucket_and_the_variables(tmp_path, capsys, monkeypatch, no_aws_credentials):
    from llm import storage

    try:
        assert main(["ingest", "work_dir=s3://llmpipe-no-credentials/w", "tracking.enabled=false"]) == 2
    finally:
        storage._s3_client.cache_clear()
    line = _error_line(capsys)
    assert line.startswith("llmpipe: error: s3://llmpipe-no-credentials: no AWS credentials found")
    assert "AWS_ACCESS_KEY_ID" in line and "AWS_PROFILE" in line


@pytest.mark.parametrize("code, words", [("403", "access denied"), ("AccessDenied", "access denied"),
                                         ("InvalidAccessKeyId", "credentials are not valid")])
def test_s3_refusals_name_the_uri(code, words):
    from botocore.exceptions import ClientError

    from llm import storage

    def refuse():
        raise ClientError({"Error": {"Code": code, "Message": "Forbidden"}}, "HeadObject")

    with pytest.raises(storage.StorageError) as exc:
        storage._s3_call(refuse, "s3://bucket/key")
    assert user_cause(exc.value) is exc.value
    assert str(exc.value).startswith("s3://bucket/key: ") and words in str(exc.value)


# ----------------------------------------------------------------------------------------- servers


def test_a_ray_address_where_nothing_listens_fails_at_once():
    from llm.cluster import ensure_ray
    from llm.config import RayConfig

    address = f"127.0.0.1:{_closed_port()}"
    for given in (address, f"ray://{address}"):
        with pytest.raises(UserError, match=f"ray.address {given}: no Ray cluster answers there"):
            ensure_ray(RayConfig(address=given))


def test_an_mlflow_server_that_does_not_answer(monkeypatch, tmp_path):
    from llm.config import TrackingConfig
    from llm.tracking import Tracker

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    port = _closed_port()
    tracker = Tracker(TrackingConfig(uri=f"http://user:s3cret@127.0.0.1:{port}"), str(tmp_path))
    with pytest.raises(UserError) as exc:
        tracker.start_run("x")
    message = str(exc.value)
    assert message.startswith(f"tracking.uri http://user:***@127.0.0.1:{port}: cannot reach the MLflow")
    assert "s3cret" not in message


def test_an_unreachable_prefect_server_is_one_line(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/api"
    proc = _run_cli(["ingest", f"work_dir={tmp_path / 'work'}", "tracking.enabled=false"],
                    env={"PREFECT_API_URL": url, "PREFECT_CLIENT_MAX_RETRIES": "0"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [f"llmpipe: error: PREFECT_API_URL {url}: cannot reach the Prefect server "
                                        "(connection refused); start it (`prefect server start`), or unset "
                                        "PREFECT_API_URL to run on a temporary local API"]


# ---------------------------------------------------- errors raised inside flows, tasks and workers


def _inside_flow_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.jsonl").write_text('{"text": "a short document"}\n')
    port = _closed_port()
    source = f"data.sources=[{{kind: jsonl, name: books, uri: {docs}, glob: '*.nothing'}}]"
    return {
        # raised by a reader while the Prefect task plans its shards
        "glob": ([source, "tracking.enabled=false"],
                 f"source 'books' (jsonl): no files matching *.nothing under {docs}"),
        # raised when the task starts Ray
        "ray": ([source.replace(", glob: '*.nothing'", ""), f"ray.address=127.0.0.1:{port}", "tracking.enabled=false"],
                f"ray.address 127.0.0.1:{port}: no Ray cluster answers there"),
        # raised by the flow itself, opening the MLflow parent run
        "mlflow": ([f"tracking.uri=http://127.0.0.1:{port}"],
                   f"tracking.uri http://127.0.0.1:{port}: cannot reach the MLflow tracking server"),
    }


@pytest.mark.parametrize("case", ["glob", "ray", "mlflow"])
def test_an_error_inside_a_prefect_run_is_one_line_without_traceback(tmp_path, case):
    overrides, message = _inside_flow_cases(tmp_path)[case]
    proc = _run_cli(["ingest", f"work_dir={tmp_path / 'work'}", *overrides],
                    env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("llmpipe: error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"llmpipe: error: {message}"), proc.stderr[-3000:]
    # Prefect's progress lines stay; its records of this failure (traceback, failed states) do not.
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "| ERROR" not in proc.stderr and "Failed(" not in proc.stderr


def _fail_stages(monkeypatch, exc: BaseException) -> None:
    import flows.pipeline

    def stages_flow(cfg, stages):
        raise exc

    monkeypatch.setattr(flows.pipeline, "stages_flow", stages_flow)


def test_a_user_error_from_a_ray_task_prints_its_message_not_the_remote_traceback(tmp_path, capsys, monkeypatch):
    from ray.exceptions import RayTaskError

    remote = RayTaskError("make_shard", "Traceback (most recent call last):\n  ...\nUserError: bad",
                          UserError("data.content.word_list=file needs data.content.blocked_words_file"))
    _fail_stages(monkeypatch, remote.as_instanceof_cause())
    assert main(["ingest", f"work_dir={tmp_path / 'work'}", "tracking.enabled=false"]) == 2
    assert _error_line(capsys) == ("llmpipe: error: data.content.word_list=file needs "
                                   "data.content.blocked_words_file")


def test_user_cause_through_a_real_ray_task(ray_local):
    from llm.executor import RayExecutor

    def shard(item):
        raise InputNotFound(f"checkpoint {item}: not there")

    with pytest.raises(Exception) as exc:
        RayExecutor().map(shard, ["a"])
    cause = user_cause(exc.value)
    assert isinstance(cause, InputNotFound) and str(cause) == "checkpoint a: not there"


def test_user_cause_through_ray_train_worker_failures():
    from ray.train.v2.api.exceptions import WorkerGroupError

    failure = WorkerGroupError("rank 0 failed", {1: RuntimeError("peer gone"), 0: UserError("train.x: bad")})
    assert str(user_cause(failure)) == "train.x: bad"
    assert user_cause(WorkerGroupError("rank 0 failed", {0: RuntimeError("a bug")})) is None


def test_a_bug_keeps_its_traceback_and_exit_1(tmp_path, capsys, monkeypatch):
    _fail_stages(monkeypatch, RuntimeError("an internal invariant broke"))
    assert main(["ingest", f"work_dir={tmp_path / 'work'}", "tracking.enabled=false"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: an internal invariant broke" in err
    assert "llmpipe: error" not in err


def test_keyboard_interrupt_is_exit_130(tmp_path, capsys, monkeypatch):
    _fail_stages(monkeypatch, KeyboardInterrupt())
    assert main(["ingest", f"work_dir={tmp_path / 'work'}", "tracking.enabled=false"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_console_filter_drops_only_the_records_of_a_user_error():
    def record(msg: str, exc: BaseException | None = None, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("prefect.task_runs", level, __file__, 1, msg, None,
                                 (type(exc), exc, None) if exc else None)

    records = _UserErrorRecords()
    assert records.filter(record("Task run failed with exception", RuntimeError("a bug")))
    assert not records.filter(record("Task run failed with exception", UserError("source 'x': no files")))
    assert not records.filter(record("Finished in state Failed(\"UserError: source 'x': no files\")"))
    assert records.filter(record("Beginning flow run", level=logging.INFO))


def test_a_bug_while_handling_a_missing_file_is_still_a_bug():
    def handler_with_a_bug():
        try:
            open("/nonexistent/llmpipe-config.yaml")
        except FileNotFoundError:
            {}["missing"]

    with pytest.raises(KeyError) as exc:
        handler_with_a_bug()
    assert user_cause(exc.value) is None
    try:
        raise RuntimeError("wrapped") from FileNotFoundError(errno.ENOENT, "No such file", "/x")
    except RuntimeError as wrapped:
        assert isinstance(user_cause(wrapped), FileNotFoundError)  # an explicit cause counts
