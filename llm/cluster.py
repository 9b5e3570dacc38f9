"""Starting or joining Ray: local by default, a cluster when an address is configured."""

from __future__ import annotations

import os
import socket
import time
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


def ensure_ray(cfg: RayConfig | None = None) -> None:
    """Initialise Ray once per process. A running Ray (e.g. inside a Ray task) is reused as it is."""
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
    runtime_env = {"env_vars": {k: os.environ[k] for k in env}}
    if address:
        setting = "ray.address" if cfg.address else "RAY_ADDRESS"
        check_reachable(address, setting)
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
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
