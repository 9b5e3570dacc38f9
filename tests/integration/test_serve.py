"""`llmpipe serve` brings up a Prefect server, a worker polling the work pool, and an MLflow server on
127.0.0.1 with prefect.yaml's deployments registered; a second serve reuses them; `llmpipe stop` ends
every process it started. One serve for the whole module (a Prefect server takes 10-30 s to start)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import yaml

from flows.processes import ServedProcess, process_start_time, stop_processes
from flows.serve import STATE_FILE, ServeState, load_state, save_state
from tests.integration.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
LLMPIPE = Path(sys.executable).parent / "llmpipe"


def _cli(args: list[str], timeout: int = 60) -> subprocess.CompletedProcess:
    # The user's shell may point at other servers: serve must not care, and the test must not use them.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_PROFILE", "MLFLOW_BACKEND_STORE_URI")}
    return subprocess.run([str(LLMPIPE), *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env=env)


def _get(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    try:
        return json.loads(text)
    except ValueError:
        return text


def _two_ports() -> tuple[int, int]:
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _stand_in() -> subprocess.Popen:
    """A real process standing in for one a serve recorded: its own session, as serve starts them."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_server_that_cannot_start_leaves_nothing_running_and_no_password_anywhere(tmp_path):
    # Runs before the module's serve starts: the two never share the 2 cores.
    home = tmp_path / "home"
    prefect_port, mlflow_port = _two_ports()
    store = f"postgresql://llmpipe:s3cret-pw@127.0.0.1:{free_port()}/mlflow"  # no database listens there
    proc = _cli(["serve", "--home", home, "--prefect-port", prefect_port, "--mlflow-port", mlflow_port,
                 "--backend-store-uri", store], timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("llmpipe: error: the MLflow server exited while starting") and \
        proc.stderr.rstrip().endswith(f"see {home / 'logs' / 'mlflow-server.log'}")
    assert len(proc.stderr.splitlines()) == 1
    assert not (home / STATE_FILE).exists()
    # The Prefect server it had started is gone too, and its port is free.
    prefect = [p for p in psutil.process_iter(["cmdline"]) if "--port" in (p.info["cmdline"] or [])
               and str(prefect_port) in p.info["cmdline"]]
    assert prefect == [] and _port_free(prefect_port)
    written = "".join(p.read_text(errors="replace") for p in home.rglob("*") if p.is_file() and p.suffix == ".log")
    assert "s3cret-pw" not in written + proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("serve") / "home"
    prefect_port, mlflow_port = _two_ports()
    recorded: dict[str, ServedProcess] = {}
    try:
        proc = _cli(["serve", "--home", home, "--prefect-port", prefect_port, "--mlflow-port", mlflow_port],
                    timeout=400)
        state = load_state(home)
        if state is not None:
            recorded.update(state.processes)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield SimpleNamespace(home=home, state=state, stdout=proc.stdout, prefect_port=prefect_port,
                              mlflow_port=mlflow_port)
    finally:
        # Whatever happened to the tests (or to serve itself), nothing it started outlives the module.
        leftover = load_state(home) if (home / STATE_FILE).exists() else None
        for processes in (leftover.processes if leftover else {}, recorded):
            stop_processes(processes, grace_s=5)


def test_serve_brings_up_prefect_worker_mlflow_and_deployments(served):
    state = served.state
    api = f"http://127.0.0.1:{served.prefect_port}/api"
    mlflow = f"http://127.0.0.1:{served.mlflow_port}"
    assert f"  export PREFECT_API_URL={api}" in served.stdout.splitlines()
    assert f"  export MLFLOW_TRACKING_URI={mlflow}" in served.stdout.splitlines()
    assert f"Prefect UI   http://127.0.0.1:{served.prefect_port}" in served.stdout
    assert set(state.processes) == {"prefect", "mlflow", "worker"}
    assert _get(f"{api}/health") is True
    assert _get(f"{mlflow}/health") == "OK"

    pool = _get(f"{api}/work_pools/llmpipe")
    assert pool["type"] == "process" and pool["status"] == "READY"
    workers = _get(f"{api}/work_pools/llmpipe/workers/filter", {})
    assert [w["status"] for w in workers] == ["ONLINE"]

    expected = {d["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    deployments = _get(f"{api}/deployments/filter", {})
    assert {d["name"] for d in deployments} == expected
    assert {d["work_pool_name"] for d in deployments} == {"llmpipe"}

    # Flow runs the worker starts inherit its environment: they reach this Prefect and track to this MLflow.
    env = psutil.Process(state.processes["worker"].pid).environ()
    assert env["PREFECT_API_URL"] == api and env["MLFLOW_TRACKING_URI"] == mlflow
    assert env["LLMPIPE_HOME"] == str(REPO)

    # Every socket the served processes listen on is on loopback.
    pids = set()
    for proc in state.processes.values():
        root = psutil.Process(proc.pid)
        pids |= {root.pid, *(c.pid for c in root.children(recursive=True))}
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert {c.laddr.port for c in listening} >= {served.prefect_port, served.mlflow_port}
    assert {c.laddr.ip for c in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}
    assert sorted(p.name for p in (served.home / "logs").iterdir()) == \
        ["deploy.log", "mlflow-server.log", "prefect-server.log", "work-pool.log", "worker.log"]


def test_a_second_serve_reuses_the_running_one(served):
    proc = _cli(["serve", "--home", served.home, "--prefect-port", served.prefect_port,
                 "--mlflow-port", served.mlflow_port])
    assert proc.returncode == 0, proc.stderr
    assert "already running" in proc.stdout.splitlines()[0]
    assert f"export PREFECT_API_URL=http://127.0.0.1:{served.prefect_port}/api" in proc.stdout
    again = load_state(served.home)
    assert again.started == served.state.started
    assert {n: p.pid for n, p in again.processes.items()} == {n: p.pid for n, p in served.state.processes.items()}


def test_a_taken_port_is_one_line_naming_the_port_and_the_flag(served, tmp_path):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        proc = _cli(["serve", "--home", tmp_path / "a", "--prefect-port", taken, "--mlflow-port", free_port()])
    assert proc.returncode == 2
    assert proc.stderr == f"llmpipe: error: port {taken} on 127.0.0.1 is already in use by another program; " \
                          "choose a free one with --prefect-port N\n"
    proc = _cli(["serve", "--home", tmp_path / "b", "--prefect-port", free_port(), "--mlflow-port", served.mlflow_port])
    assert proc.returncode == 2 and f"port {served.mlflow_port} " in proc.stderr and "--mlflow-port N" in proc.stderr
    assert not (tmp_path / "a" / STATE_FILE).exists() and not (tmp_path / "b" / STATE_FILE).exists()


def _state(home: Path, processes: dict[str, ServedProcess]) -> None:
    home.mkdir(parents=True)
    prefect_port, mlflow_port = _two_ports()
    save_state(ServeState(home=str(home), prefect_port=prefect_port, mlflow_port=mlflow_port, pool="llmpipe",
                          backend_store_uri="sqlite:///x.db", artifacts_destination="artifacts",
                          started="2026-01-01T00:00:00+00:00", processes=processes))


def test_a_partly_running_serve_is_refused_and_stop_ends_what_is_left(tmp_path):
    home = tmp_path / "partial"
    alive = _stand_in()
    try:
        dead = _dead_pid()
        _state(home, {"prefect": ServedProcess(alive.pid, process_start_time(alive.pid), "prefect.log"),
                      "worker": ServedProcess(dead, 1, "worker.log")})
        proc = _cli(["serve", "--home", home])
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert f"worker (pid {dead}) is not running" in proc.stderr
        assert "the Prefect server does not answer" in proc.stderr
        assert f"`llmpipe stop --home {home}`" in proc.stderr
        assert alive.poll() is None and (home / STATE_FILE).exists()

        proc = _cli(["stop", "--home", home])
        assert proc.returncode == 0, proc.stderr
        assert f"prefect (pid {alive.pid}) stopped" in proc.stdout
        assert f"worker (pid {dead}) was not running" in proc.stdout
        assert alive.wait(timeout=10) == -15
        assert not (home / STATE_FILE).exists()
    finally:
        alive.kill()
        alive.wait()


def test_a_stale_state_file_is_removed_and_a_reused_pid_is_left_alone(served, tmp_path):
    home = tmp_path / "stale"
    stranger = _stand_in()  # holds a recorded PID now, but is not the process that was recorded
    try:
        _state(home, {"prefect": ServedProcess(_dead_pid(), 1, "prefect.log"),
                      "worker": ServedProcess(stranger.pid, process_start_time(stranger.pid) - 1, "worker.log")})
        # The served ports are taken: after cleaning up, this serve stops at the port check.
        proc = _cli(["serve", "--home", home, "--prefect-port", served.prefect_port, "--mlflow-port", free_port()])
        assert "removed a stale state file" in proc.stdout
        assert not (home / STATE_FILE).exists()
        assert proc.returncode == 2 and f"port {served.prefect_port} " in proc.stderr
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_stop_ends_every_process_and_frees_the_ports(served):
    processes = load_state(served.home).processes
    pids = set()
    for proc in processes.values():
        root = psutil.Process(proc.pid)
        pids |= {root.pid, *(c.pid for c in root.children(recursive=True))}
    assert len(pids) >= 3
    stop = _cli(["stop", "--home", served.home])
    assert stop.returncode == 0, stop.stderr
    for name, proc in processes.items():
        assert f"{name} (pid {proc.pid}) stopped" in stop.stdout
    assert [pid for pid in pids if not _gone(pid)] == []
    assert _port_free(served.prefect_port) and _port_free(served.mlflow_port)
    assert not (served.home / STATE_FILE).exists()
    again = _cli(["serve", "--stop", "--home", served.home])
    assert again.returncode == 0 and "nothing to stop" in again.stdout
