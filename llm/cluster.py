"""Starting or joining Ray: local by default, a cluster when an address is configured."""

from __future__ import annotations

import os
import time

from llm.config import RayConfig

# No network to send telemetry to, and Ray's ports should stay on loopback for a local run.
_QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_DEDUP_LOGS": "1",
}


def ensure_ray(cfg: RayConfig | None = None) -> None:
    """Initialise Ray once per process. A running Ray (e.g. inside a Ray task) is reused as it is."""
    import ray

    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    # Workers import llm/, tasks/ from the driver's working tree when the project is not installed.
    runtime_env = {"env_vars": {k: os.environ[k] for k in _QUIET_ENV}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
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
