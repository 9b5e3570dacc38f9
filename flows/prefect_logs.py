"""The work's own log lines in the Prefect run's logs, however the run was started.

The CLI sets `PREFECT_LOGGING_EXTRA_LOGGERS=llm` before Prefect configures logging; a deployment's flow
run, started by a worker, does not. While a flow runs, `run_logs_to_prefect` therefore

- sends the project's `llm` log records (stage counts, the training log line, a registered model) to the
  run, unless Prefect's own handler already does; and
- forwards what Ray workers print (the lines Ray shows on the driver's console, data stages' and Ray Train
  workers' included) to the flow run's logs, prefixed with the worker as Ray prints it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

_RAY_HANDLER = "llmpipe_prefect_logs"
# A Ray line longer than this is cut (a progress bar redrawn thousands of times is one "line").
_MAX_LINE = 2000


@contextmanager
def run_logs_to_prefect() -> Iterator[None]:
    """Inside a Prefect flow run: `llm` records and Ray workers' output go to the run's logs. Outside one
    (a plain function call, a test), nothing changes."""
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        yield
        return
    from prefect.logging.handlers import APILogHandler

    llm_logger = logging.getLogger("llm")
    added = None
    if not any(isinstance(h, APILogHandler) for h in llm_logger.handlers):
        added = APILogHandler()
        llm_logger.addHandler(added)
    old_level = llm_logger.level
    if old_level == logging.NOTSET or old_level > logging.INFO:
        llm_logger.setLevel(logging.INFO)
    # Ray prints its workers' lines on the console itself: they go to the run's logs only (a logger
    # of its own, not propagating), with the flow run named explicitly, since Ray's log thread has no
    # Prefect context.
    ray_logger = logging.getLogger("llmpipe.ray_workers")
    ray_logger.propagate = False
    ray_logger.setLevel(logging.INFO)
    api_handler = APILogHandler()
    ray_logger.addHandler(api_handler)
    run_logger = logging.LoggerAdapter(ray_logger, {"flow_run_id": str(FlowRunContext.get().flow_run.id)})
    dispatcher = _ray_dispatcher()
    if dispatcher is not None:
        dispatcher.add_handler(_RAY_HANDLER, lambda batch: _forward_ray_batch(run_logger, batch))
    try:
        yield
    finally:
        if dispatcher is not None:
            dispatcher.remove_handler(_RAY_HANDLER)
        ray_logger.removeHandler(api_handler)
        if added is not None:
            llm_logger.removeHandler(added)
        llm_logger.setLevel(old_level)


def _ray_dispatcher():
    """Ray's driver-side dispatcher of worker output (what `log_to_driver` prints), or None where this
    Ray has none. It is called from Ray's log thread, for every job of the driver."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher
    except ImportError:
        return None
    return global_worker_stdstream_dispatcher


def ray_line_prefix(batch: dict) -> str:
    """How Ray names a worker on the console: `(task_or_actor pid=123, ip=10.0.0.2)`."""
    who = batch.get("actor_name") or batch.get("task_name") or "worker"
    where = f"pid={batch.get('pid')}"
    if batch.get("ip") and batch.get("ip") != batch.get("localhost"):
        where += f", ip={batch['ip']}"
    return f"({who} {where})"


def _forward_ray_batch(run_logger, batch: dict) -> None:
    if batch.get("pid") == "autoscaler":  # the cluster's resource report, every few seconds: not the work's
        return
    prefix = ray_line_prefix(batch)
    level = logging.WARNING if batch.get("is_err") and _looks_like_error(batch) else logging.INFO
    for line in batch.get("lines", []):
        text = line.rstrip()
        if not text or "\r" in text and "%|" in text:  # a tqdm redraw: the final bar comes as its own line
            continue
        try:
            run_logger.log(level, "%s %s", prefix, text[:_MAX_LINE])
        except Exception:  # logging must never take Ray's log thread down
            pass


def _looks_like_error(batch: dict) -> bool:
    # Python's logging and tqdm write to stderr too: only tracebacks and errors are warnings.
    return any(("Traceback" in line or "Error" in line) for line in batch.get("lines", []))
