"""Starting or joining Ray: local by default, a cluster when an address is configured."""

from __future__ import annotations

import os
import socket
import time
from typing import Mapping
from urllib.parse import urlsplit

from llm.config import RayConfig
from llm.errors import UserError

# No network to send telemetry to.
_QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "1",
}
# A local Ray's every port on loopback: Ray turns the 127.0.0.1 given as the node address into the
# machine's outward address (and its servers then listen on all interfaces) unless this is off. Not for
# a cluster, whose processes must reach each other across hosts.
_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

# What every Ray task and Ray Train worker needs from the driver's environment: a worker on another
# node starts from its own node's environment, not the driver's. Names ending in "_" are prefixes; only
# variables set in the driver are forwarded, and their values (credentials among them) are never logged.
# - AWS_*: S3 credentials, region, endpoint, profile, CA bundle (AWS_CA_BUNDLE) for s3:// work dirs
# - MLFLOW_*: the tracking server's URI, its credentials and artifact endpoint (MLFLOW_S3_ENDPOINT_URL)
# - LLMPIPE_*: the project's own settings (LLMPIPE_PSEUDONYM_KEY, LLMPIPE_TOKEN_CACHE, ...)
# - Ray's telemetry and loopback switches above (the loopback one for a local Ray only)
# Ray's switches travel as the job's runtime_env `env_vars` (a worker reads them as it starts). The rest
# travel in a worker setup hook, which Ray keeps in its cluster store and runs in every worker of the
# job before its first task: Ray's runtime-env agent writes a job's `env_vars` into its log file on every
# node, where credentials must not go.
FORWARDED_ENV = ("AWS_", "MLFLOW_", "LLMPIPE_", *_QUIET_ENV, *_LOOPBACK_ENV)
_RAY_SWITCHES = (*_QUIET_ENV, *_LOOPBACK_ENV)

# What `ensure_ray` forwarded to the Ray job this process started or joined (None: it did not start one).
_forwarded: dict[str, str] | None = None


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of `environ` (default: this process's) that `FORWARDED_ENV` names, set ones only."""
    environ = os.environ if environ is None else environ
    prefixes = tuple(n for n in FORWARDED_ENV if n.endswith("_"))
    names = {n for n in FORWARDED_ENV if not n.endswith("_")}
    return {k: v for k, v in sorted(environ.items()) if k in names or k.startswith(prefixes)}


def unforwarded_names() -> list[str]:
    """Names (never values) of the forwarded variables set here that the running Ray job does not carry
    with the same value: set after Ray started, or every one when Ray was started outside `ensure_ray`."""
    carried = _forwarded or {}
    return [k for k, v in forwarded_env().items() if carried.get(k) != v and k not in _LOOPBACK_ENV]


def job_runtime_env(env: Mapping[str, str], cluster: bool) -> dict:
    """The runtime_env that carries `env` (from `forwarded_env`) to the job's workers: Ray's switches as
    `env_vars`, the rest in a setup hook (see FORWARDED_ENV). On a `cluster`, no loopback switch."""
    switches = {k: v for k, v in env.items() if k in _RAY_SWITCHES and not (cluster and k in _LOOPBACK_ENV)}
    carried = {k: v for k, v in env.items() if k not in _RAY_SWITCHES}
    runtime_env: dict = {"env_vars": switches}
    if carried:
        runtime_env["worker_process_setup_hook"] = _setting_env(carried)
    return runtime_env


def _setting_env(values: dict[str, str]):
    # A closure, so cloudpickle ships it by value with its values; Ray names the hook by __name__.
    def set_forwarded_env() -> None:
        os.environ.update(values)

    return set_forwarded_env


def ensure_ray(cfg: RayConfig | None = None) -> None:
    """Initialise Ray once per process. A running Ray (e.g. inside a Ray task) is reused as it is.

    The job's runtime_env carries `forwarded_env()`, so tasks and Ray Train workers on every node see
    the driver's credentials and settings; it is passed to Ray only, never logged."""
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    env = dict(_QUIET_ENV) if address else {**_QUIET_ENV, **_LOOPBACK_ENV}
    # Set before Ray is imported: Ray reads them once, at import.
    for key, value in env.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return
    # Workers import llm/, tasks/ from the driver's working tree when the project is not installed.
    global _forwarded
    forwarded = forwarded_env()
    runtime_env = job_runtime_env(forwarded, cluster=bool(address))
    if address:
        setting = "ray.address" if cfg.address else "RAY_ADDRESS"
        check_reachable(address, setting)
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
            _forwarded = forwarded
        except ConnectionError as exc:  # `auto` with no cluster on this machine, a cluster that went away
            raise UserError(f"{setting} {address}: no Ray cluster found there ({exc}); start one (`ray start "
                            "--head`) or leave ray.address empty to run Ray on this machine") from None
        return
    _bind_loopback()
    ray.init(
        num_cpus=cfg.num_cpus,
        object_store_memory=cfg.object_store_memory,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env=runtime_env,
        log_to_driver=True,
        configure_logging=False,
    )
    _forwarded = forwarded
    _start_workers(ray)


def check_reachable(address: str, setting: str = "ray.address", timeout_s: float = 5.0) -> None:
    """Refuse at once a `host:port` or `ray://host:port` address where nothing listens: Ray itself
    retries a dead address for many minutes before it gives up. `auto` and `local` (this machine) are
    left to Ray."""
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if parts.scheme not in ("", "ray") or not host or not port:
        raise UserError(f"{setting} {address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{setting} {address}: no Ray cluster answers there ({reason.lower()}); start one "
                        "(`ray start --head`) or leave ray.address empty to run Ray on this machine") from None


def _bind_loopback() -> None:
    """Apply RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER to a Ray imported before `ensure_ray` set it (a caller's
    `import ray`): the Ray processes it starts read the variable themselves, this one read it already."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"].lower() in ("1", "true")


def on_loopback() -> bool:
    """Whether this process's Ray node lives on 127.0.0.1 (a local run), so nothing of it needs to be
    reachable from another host."""
    import ipaddress

    import ray

    return ipaddress.ip_address(ray.util.get_node_ip_address()).is_loopback


def _start_workers(ray) -> None:
    """Bring up one worker process per CPU of the new local cluster now (~1-2 s, once): otherwise the
    first stage's first tasks each wait for a process to start. The tasks hold their CPU briefly, so
    Ray starts them side by side rather than reusing the first worker."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    hold = ray.remote(num_cpus=1)(_hold)
    ray.get([hold.remote(0.25) for _ in range(cpus)])


def _hold(seconds: float) -> None:
    time.sleep(seconds)


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
