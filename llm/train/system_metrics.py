"""System metrics (CPU, memory, disk, network and GPU when present) of a training run, in its MLflow run.

MLflow's own monitor samples them in a background thread and logs them as `system/...` metrics
(`system/cpu_utilization_percentage`, `system/system_memory_usage_megabytes`, `system/gpu_0_...`) to
the given run id; it is started and stopped explicitly here, so it logs to the stage's run (a
`RunTarget`) without relying on MLflow's global "active run".
"""

from __future__ import annotations

import logging
from typing import Any

from llm.tracking import RunTarget

log = logging.getLogger("llm.train")

#: Seconds between samples: often enough to see a step's rhythm, rare enough to cost nothing.
SAMPLING_INTERVAL_S = 5.0


class SystemMetrics:
    """Context manager: samples this host's system metrics into `run_target`'s run while open.

    Does nothing when `run_target` is None or `enabled` is false. Observability only: a monitor that
    cannot start or log (psutil missing, tracking outage) is a warning, never a failed training run.
    """

    def __init__(self, run_target: RunTarget | None, enabled: bool = True, interval_s: float = SAMPLING_INTERVAL_S):
        self.run_target = run_target if enabled else None
        self.interval_s = interval_s
        self._monitor: Any = None

    def __enter__(self) -> "SystemMetrics":
        if self.run_target is None:
            return self
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            # resume_logging: a run restarted after a failure continues the system-metric steps.
            self._monitor = SystemMetricsMonitor(
                self.run_target.run_id,
                sampling_interval=self.interval_s,
                resume_logging=True,
                tracking_uri=self.run_target.tracking_uri,
            )
            self._monitor.start()
        except Exception as exc:
            log.warning("system metrics are not logged: %s", exc)
            self._monitor = None
        return self

    def __exit__(self, *exc_info: Any) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        try:
            monitor.finish()
            # The thread stops without logging the samples of its last, unfinished interval; log them,
            # so that a run shorter than one interval still has its system metrics.
            pending = monitor.aggregate_metrics()
            if pending:
                monitor.publish_metrics(pending)
                monitor.mlflow_logger.flush()
        except Exception as exc:
            log.warning("could not log the last system metrics: %s", exc)
