"""`llmpipe serve` and `llmpipe stop`: the local control plane, on 127.0.0.1 only.

`serve` starts a Prefect server (its own PREFECT_HOME), a process work pool with one worker polling it,
and an MLflow tracking server (SQLite and a local artifacts folder unless told otherwise), registers
every deployment in prefect.yaml, and returns, leaving them running in the background. The worker gets
PREFECT_API_URL and MLFLOW_TRACKING_URI, so the flow runs it starts are tracked by the served MLflow.

Everything lives in one folder, the serve home (default `.llmpipe/serve` in the project root):

    state.json      PIDs (with their start times, so a reused PID is never mistaken for ours), ports, URLs
    prefect/        the Prefect server's PREFECT_HOME (its SQLite database)
    mlflow/         mlflow.db and artifacts/, when no other store is configured
    logs/           one log per process, plus the work-pool creation and `prefect deploy --all`

`stop` ends exactly the recorded processes, each with its process group and descendants (the worker's
flow-run subprocesses): SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from flows.processes import STOP_GRACE_S, ServedProcess, is_running, log_tail, start_process, stop_processes
from llm.errors import UserError, without_password

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HOME = PROJECT_ROOT / ".llmpipe" / "serve"
DEFAULT_PREFECT_PORT = 4200
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_POOL = "llmpipe"  # the pool prefect.yaml's deployments name
HOST = "127.0.0.1"
STATE_FILE = "state.json"
# A Prefect server takes 10-30 s to answer on a busy 2-core machine; leave room for a slower one.
START_TIMEOUT_S = 240.0
DEPLOY_TIMEOUT_S = 600.0
# Stopped in this order: the worker first, so no flow run is picked up while the servers go.
PROCESS_ORDER = ("worker", "mlflow", "prefect")

Echo = Callable[[str], None]


@dataclass
class ServeState:
    """What `serve` started, as recorded in the serve home's state.json."""

    home: str
    prefect_port: int
    mlflow_port: int
    pool: str
    backend_store_uri: str  # password masked: the state file is not a place for secrets
    artifacts_destination: str
    started: str
    processes: dict[str, ServedProcess] = field(default_factory=dict)
    deployments: list[str] = field(default_factory=list)

    @property
    def prefect_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}"

    @property
    def api_url(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"


# ------------------------------------------------------------------------------------------- state


def resolve_home(home: str | os.PathLike | None) -> Path:
    """The serve home: `home` made absolute, or the default `.llmpipe/serve` in the project root."""
    return Path(home).expanduser().resolve() if home else DEFAULT_HOME


def load_state(home: Path) -> ServeState | None:
    """The state recorded in `home`, or None when there is none. An unreadable state file is the
    user's to remove, and the message says so."""
    path = home / STATE_FILE
    try:
        raw = json.loads(path.read_text())
        processes = {name: ServedProcess(**p) for name, p in raw.pop("processes", {}).items()}
        return ServeState(**raw, processes=processes)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a state file llmpipe serve wrote ({exc}); stop what it started by hand "
                        "and remove the file") from exc


def save_state(state: ServeState) -> None:
    """Write state.json atomically (temp name, then rename), so a reader never sees half of it."""
    path = Path(state.home) / STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, path)


def _remove_state(home: Path) -> None:
    (home / STATE_FILE).unlink(missing_ok=True)


def _executable(name: str) -> str:
    # The console script beside this interpreter first: the venv's prefect and mlflow, not another one.
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise UserError(f"`{name}` is not installed in this environment; install the project (`make install`)")
    return found


# ------------------------------------------------------------------------------------------ checks


def port_in_use(port: int) -> bool:
    """Whether something on this machine holds `port` on 127.0.0.1 (or on every interface)."""
    with socket.socket() as sock:
        if sock.connect_ex((HOST, port)) == 0:
            return True
    with socket.socket() as sock:
        # The same option the servers set: a port in TIME_WAIT after a stop is free to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def _http(url: str, body: dict | None = None, timeout: float = 5.0) -> tuple[int, object]:
    """(status, decoded JSON body or text) of a GET, or of a POST when `body` is given; (0, reason)
    when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode(errors="replace")
    except (OSError, urllib.error.URLError) as exc:
        return 0, str(exc)
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def prefect_healthy(state: ServeState) -> bool:
    """Whether the Prefect server answers its health check."""
    return _http(f"{state.api_url}/health")[0] == 200


def mlflow_healthy(state: ServeState) -> bool:
    """Whether the MLflow server answers its health check."""
    return _http(f"{state.mlflow_url}/health")[0] == 200


def online_workers(state: ServeState) -> list[str]:
    """Names of the workers polling the pool (status ONLINE), through the Prefect API."""
    status, workers = _http(f"{state.api_url}/work_pools/{state.pool}/workers/filter", {})
    if status != 200 or not isinstance(workers, list):
        return []
    return [w["name"] for w in workers if w.get("status") == "ONLINE"]


def deployment_names(state: ServeState) -> list[str]:
    """The server's deployments as `flow-name/deployment-name`, through the Prefect API."""
    _, flows = _http(f"{state.api_url}/flows/filter", {})
    flow_names = {f["id"]: f["name"] for f in flows} if isinstance(flows, list) else {}
    _, deployments = _http(f"{state.api_url}/deployments/filter", {})
    if not isinstance(deployments, list):
        return []
    return sorted(f"{flow_names.get(d['flow_id'], '?')}/{d['name']}" for d in deployments)


def _problems(state: ServeState) -> list[str]:
    """What is wrong with a recorded serve: processes not running, servers not answering."""
    problems = [f"{name} (pid {proc.pid}) is not running" for name, proc in state.processes.items()
                if not is_running(proc)]
    missing = [name for name in PROCESS_ORDER if name not in state.processes]
    problems += [f"no {name} was recorded (a serve that did not finish starting)" for name in missing]
    running = {name for name, proc in state.processes.items() if is_running(proc)}
    if "prefect" in running and not prefect_healthy(state):
        problems.append(f"the Prefect server does not answer {state.api_url}/health")
    if "mlflow" in running and not mlflow_healthy(state):
        problems.append(f"the MLflow server does not answer {state.mlflow_url}/health")
    return problems


PROCESS_TITLES = {"prefect": "the Prefect server", "mlflow": "the MLflow server", "worker": "the worker"}


def _check_started(state: ServeState) -> None:
    """Fail at once, naming its log, when a process serve started has ended (a bad store URI, a
    missing driver): there is no point waiting for the others."""
    for name, proc in state.processes.items():
        if not is_running(proc):
            tail = log_tail(proc.log)
            raise UserError(f"{PROCESS_TITLES.get(name, name)} exited while starting"
                            + (f" ({tail})" if tail else "") + f"; see {proc.log}")


def _wait(what: str, ready: Callable[[], bool], state: ServeState, log: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        _check_started(state)
        if time.monotonic() > deadline:
            raise UserError(f"{what} was not ready after {timeout:.0f} s; see {log}")
        time.sleep(0.3)


# ------------------------------------------------------------------------------------------- serve


def _environment(state: ServeState, home: Path) -> dict[str, str]:
    """The environment of every process serve starts: the served addresses, the project's home for
    prefect.yaml's pull step, and no telemetry (nothing here to send it to)."""
    env = dict(os.environ)
    env.update({
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_URL": state.api_url,
        "MLFLOW_TRACKING_URI": state.mlflow_url,
        "LLMPIPE_HOME": str(PROJECT_ROOT),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
        # A flow run's local Ray listens on loopback only, as in the CLI.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    })
    # MLflow's job runner (GenAI scorers, prompt optimization; nothing llmpipe uses) is half a dozen
    # more processes: off unless the user turns it on.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.pop("PREFECT_PROFILE", None)  # a profile of the user's home would point elsewhere
    return env


def _mark_ignored(home: Path) -> None:
    # The default home sits inside the checkout: a `*` .gitignore keeps its databases and logs out of git.
    if home == DEFAULT_HOME:
        ignore = home.parent / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")


def _check_ports(prefect_port: int, mlflow_port: int) -> None:
    if prefect_port == mlflow_port:
        raise UserError(f"--prefect-port and --mlflow-port are both {prefect_port}; give them different ports")
    for port, flag in ((prefect_port, "--prefect-port"), (mlflow_port, "--mlflow-port")):
        if port_in_use(port):
            raise UserError(f"port {port} on {HOST} is already in use by another program; "
                            f"choose a free one with {flag} N")


def _run_step(what: str, command: list[str], log_path: Path, env: dict[str, str], timeout: float) -> None:
    """Run one setup command to completion, its output appended to `log_path`."""
    with open(log_path, "ab") as log:
        log.write(f"--- {datetime.now(timezone.utc).isoformat(timespec='seconds')} {' '.join(command)}\n".encode())
        log.flush()
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  env=env, cwd=PROJECT_ROOT, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise UserError(f"{what} did not finish in {timeout:.0f} s; see {log_path}") from exc
    if done.returncode != 0:
        tail = log_tail(log_path)
        raise UserError(f"{what} failed (exit status {done.returncode})" + (f": {tail}" if tail else "")
                        + f"; see {log_path}")


def _existing(home: Path, echo: Echo) -> ServeState | None:
    """A running serve recorded in `home` to reuse; None when there is none (a stale state file of
    processes that have all ended is removed). A partly running one is refused."""
    state = load_state(home)
    if state is None:
        return None
    if not any(is_running(p) for p in state.processes.values()):
        _remove_state(home)
        echo(f"llmpipe serve: removed a stale state file (none of its processes is running): {home / STATE_FILE}")
        return None
    problems = _problems(state)
    if problems:
        raise UserError(f"a serve recorded in {home} is only partly running: {'; '.join(problems)}; "
                        f"end what is left with `llmpipe stop{_home_flag(home)}`, then serve again")
    return state


def _home_flag(home: Path) -> str:
    return "" if home == DEFAULT_HOME else f" --home {home}"


def serve(home: str | os.PathLike | None = None, prefect_port: int = DEFAULT_PREFECT_PORT,
          mlflow_port: int = DEFAULT_MLFLOW_PORT, pool: str = DEFAULT_POOL, backend_store_uri: str | None = None,
          artifacts_destination: str | None = None, echo: Echo = print) -> ServeState:
    """Start (or reuse) the Prefect server, work pool and worker, and MLflow server recorded in `home`,
    register prefect.yaml's deployments, and print the addresses to use. Returns the recorded state.

    The MLflow stores: `backend_store_uri` (else $MLFLOW_BACKEND_STORE_URI, else SQLite in the home)
    and `artifacts_destination` (else $MLFLOW_ARTIFACTS_DESTINATION, else a folder in the home); an
    s3:// destination uses the usual AWS_* variables (and MLFLOW_S3_ENDPOINT_URL)."""
    home = resolve_home(home)
    existing = _existing(home, echo)
    if existing is not None:
        echo(f"llmpipe serve: already running from {home} (started {existing.started}); reusing it")
        if (existing.prefect_port, existing.mlflow_port) != (prefect_port, mlflow_port):
            echo(f"  (its ports are {existing.prefect_port} and {existing.mlflow_port}; "
                 f"`llmpipe stop{_home_flag(home)}` first to serve on others)")
        _print_addresses(existing, echo)
        return existing
    if not (PROJECT_ROOT / "prefect.yaml").exists():
        raise UserError(f"{PROJECT_ROOT / 'prefect.yaml'}: not found; serve registers the deployments it lists")
    _check_ports(prefect_port, mlflow_port)
    home.mkdir(parents=True, exist_ok=True)
    _mark_ignored(home)
    logs = home / "logs"
    backend = backend_store_uri or os.environ.get("MLFLOW_BACKEND_STORE_URI") \
        or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    artifacts = artifacts_destination or os.environ.get("MLFLOW_ARTIFACTS_DESTINATION") \
        or str(home / "mlflow" / "artifacts")
    if backend.startswith("sqlite:///"):
        Path(backend[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    state = ServeState(home=str(home), prefect_port=prefect_port, mlflow_port=mlflow_port, pool=pool,
                       backend_store_uri=without_password(backend), artifacts_destination=artifacts,
                       started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    env = _environment(state, home)
    prefect, mlflow = _executable("prefect"), _executable("mlflow")
    try:
        # Both servers start at once; the state is written after each start, so a serve killed half-way
        # leaves a record `llmpipe stop` can end.
        state.processes["prefect"] = start_process(
            [prefect, "server", "start", "--host", HOST, "--port", str(prefect_port), "--analytics-off"],
            logs / "prefect-server.log", env, PROJECT_ROOT)
        save_state(state)
        # The store URI goes by environment, not argv: a database password stays out of `ps`, the
        # state file and the log.
        state.processes["mlflow"] = start_process(
            [mlflow, "server", "--host", HOST, "--port", str(mlflow_port), "--workers", "1",
             "--artifacts-destination", artifacts],
            logs / "mlflow-server.log", {**env, "MLFLOW_BACKEND_STORE_URI": backend}, PROJECT_ROOT)
        save_state(state)
        _wait("the Prefect server", lambda: prefect_healthy(state), state, state.processes["prefect"].log,
              START_TIMEOUT_S)
        if _http(f"{state.api_url}/work_pools/{pool}")[0] == 404:
            _run_step(f"creating the work pool {pool}", [prefect, "work-pool", "create", pool, "--type", "process"],
                      logs / "work-pool.log", env, START_TIMEOUT_S)
        state.processes["worker"] = start_process([prefect, "worker", "start", "--pool", pool], logs / "worker.log",
                                                  env, PROJECT_ROOT)
        save_state(state)
        _run_step("`prefect deploy --all`", [prefect, "deploy", "--all", "--no-prompt"], logs / "deploy.log", env,
                  DEPLOY_TIMEOUT_S)
        _check_started(state)
        _wait("the MLflow server", lambda: mlflow_healthy(state), state, state.processes["mlflow"].log,
              START_TIMEOUT_S)
        _wait(f"the worker of pool {pool}", lambda: bool(online_workers(state)), state,
              state.processes["worker"].log, START_TIMEOUT_S)
        state.deployments = deployment_names(state)
        save_state(state)
    except BaseException:
        # All or nothing: a serve that did not come up leaves no process behind, only its logs.
        stop_processes(_in_stop_order(state.processes))
        _remove_state(home)
        raise
    echo(f"llmpipe serve: started from {home}")
    _print_addresses(state, echo)
    return state


def _print_addresses(state: ServeState, echo: Echo) -> None:
    home = Path(state.home)
    pids = ", ".join(f"{name} {proc.pid}" for name, proc in state.processes.items())
    echo(f"  Prefect UI   {state.prefect_url}")
    echo(f"  MLflow UI    {state.mlflow_url}   (store {state.backend_store_uri}, artifacts "
         f"{state.artifacts_destination})")
    echo(f"  work pool    {state.pool}, deployments: {', '.join(state.deployments) or 'none'}")
    echo(f"  processes    {pids}; logs in {home / 'logs'}")
    echo("Point this shell at them:")
    echo(f"  export PREFECT_API_URL={state.api_url}")
    echo(f"  export MLFLOW_TRACKING_URI={state.mlflow_url}")
    echo(f"Stop them with `llmpipe stop{_home_flag(home)}`.")


# -------------------------------------------------------------------------------------------- stop


def _in_stop_order(processes: dict[str, ServedProcess]) -> dict[str, ServedProcess]:
    rank = {name: i for i, name in enumerate(PROCESS_ORDER)}
    return dict(sorted(processes.items(), key=lambda item: rank.get(item[0], -1)))


def stop(home: str | os.PathLike | None = None, echo: Echo = print) -> dict[str, str]:
    """Stop the processes recorded in `home` (by PID, with their groups and descendants), remove the
    state file, and print what was stopped. Returns name -> outcome (empty when nothing was recorded)."""
    home = resolve_home(home)
    state = load_state(home)
    if state is None:
        echo(f"llmpipe stop: nothing recorded in {home}; nothing to stop")
        return {}
    outcome = stop_processes(_in_stop_order(state.processes))
    _remove_state(home)
    for name in outcome:
        pid = state.processes[name].pid
        how = {"stopped": "stopped", "killed": f"killed (still running {STOP_GRACE_S:.0f} s after SIGTERM)",
               "not running": "was not running"}[outcome[name]]
        echo(f"llmpipe stop: {name} (pid {pid}) {how}")
    return outcome
