"""Where shard work runs: in this process (debugging, tests), in worker processes on this machine, or
as Ray tasks (default).

A stage hands a function and a list of items to `map`; it never knows where they run. Results come
back in input order; failures re-raise in the caller after in-flight work finishes, with the item named.
`run_task` runs one whole call (a stage that is a single piece of work) as one Ray task.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from typing import Any, Callable, Sequence


class LocalExecutor:
    """Runs items one after another in this process."""

    def __init__(self, progress: bool = False):
        self.progress = progress

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str = "",
            num_cpus: float | None = None) -> list[Any]:
        """`fn` of each item, in order; `num_cpus` is for executors that reserve CPUs (ignored here)."""
        out = []
        bar = progress_bar(len(items), desc, self.progress and bool(items))
        try:
            for item in items:
                out.append(fn(item))
                bar.update(1)
        finally:
            bar.close()
        return out


class ProcessExecutor:
    """Runs items in a pool of worker processes on this machine, one core each: the data stages'
    parallelism without Ray's start-up (seconds: Ray's processes, its workers, their first imports).

    The workers are forked from this process on the first `map` (or at `start`), so they start with its
    imports (the stage's modules, numba, pyarrow) already loaded, and are reused by every later `map`
    until `close` (or exit). Fork is safe here although pyarrow may have started threads: Arrow's thread pools and
    allocator re-initialise in a forked child, and the compiled loops (numba) start no threads. A new
    worker skips two library probes on its way to its first item (`llm.worker_startup`). As many
    workers as `ray_config.num_cpus` when set, else the CPUs this process may use; in a worker
    `task_cpus()` is 1. A `map` asking `num_cpus` above one runs only workers / `num_cpus` runs at
    once (each still on one core), as Ray would schedule them.

    Items are cut into runs of consecutive items, about `tasks_per_cpu` per worker, as `RayExecutor`
    does: each run is one round trip to a worker. The function is pickled with cloudpickle (closures
    and lambdas work, as on Ray). `nodes` counts the items run on this machine (by host name)."""

    def __init__(self, workers: int | None = None, progress: bool = False, ray_config=None,
                 tasks_per_cpu: int = 4):
        configured = getattr(ray_config, "num_cpus", None)
        self.workers = workers or configured or machine_cpus()
        self.progress = progress
        self.tasks_per_cpu = tasks_per_cpu
        self.nodes: Counter[str] = Counter()
        self._pool = None
        self._finalizer = None

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str = "",
            num_cpus: float | None = None) -> list[Any]:
        """`fn` of each item on the workers, in input order; the first failure re-raised after the
        runs already started finish."""
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        if not items:
            return []
        import cloudpickle

        pool = self._start()
        payload = cloudpickle.dumps(fn)
        slots = max(1, int(self.workers // max(1.0, num_cpus or 1)))
        # One run queued behind each running one keeps workers busy; more would only hold memory.
        limit = slots if slots < self.workers else 2 * slots
        bar = progress_bar(len(items), desc, self.progress)
        try:
            return _schedule(items, _chunks(len(items), slots * self.tasks_per_cpu), limit,
                             lambda part: pool.submit(_run_in_worker, payload, part),
                             lambda futures: wait(futures, return_when=FIRST_COMPLETED)[0],
                             lambda future: (socket.gethostname(), future.result()), self.nodes, bar)
        except BrokenProcessPool:  # a worker died (killed, out of memory): the next map starts afresh
            self.close()
            raise

    def start(self) -> None:
        """Fork the workers now rather than at the first `map`, so they come up while the caller does
        other work (a stage planning its maps). They start with the modules imported so far."""
        self._start().submit(int)

    def _start(self):
        if self._pool is None:
            import multiprocessing
            import weakref
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context("fork"),
                                             initializer=_become_worker)
            # Workers stop when this executor is collected or the interpreter exits, whichever is first.
            self._finalizer = weakref.finalize(self, self._pool.shutdown, wait=True, cancel_futures=True)
        return self._pool

    def close(self) -> None:
        """Stop the workers (a later `map` starts new ones)."""
        if self._finalizer is not None:
            self._finalizer()
        self._pool = self._finalizer = None

    def __enter__(self) -> "ProcessExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# In a worker: the last function unpickled, by its pickled bytes (one per map, sent with every run).
_worker_fn: tuple[bytes, Callable] | None = None


def _become_worker() -> None:
    global _worker_process
    _worker_process = True
    from llm.worker_startup import prepare_worker

    prepare_worker()


def _run_in_worker(payload: bytes, items: list) -> list:
    global _worker_fn
    if _worker_fn is None or _worker_fn[0] != payload:
        import cloudpickle

        _worker_fn = (payload, cloudpickle.loads(payload))
    return call_each(_worker_fn[1], items)


class RayExecutor:
    """Runs items as Ray tasks (`num_cpus` each), at most `max_in_flight` at a time so memory stays
    bounded by the shard size times the parallelism.

    Many small items are cut into runs of consecutive items, one task per run (about `tasks_per_cpu`
    tasks per CPU): a task costs milliseconds to schedule, which would otherwise dominate a pass over
    hundreds of small shards. A task processes its items one after another, so memory stays that of
    one item.

    `nodes` counts, per Ray node id, the items that ran there (every `map` so far): where a stage's
    work went on a cluster."""

    def __init__(self, num_cpus: float = 1, max_in_flight: int | None = None, progress: bool = False,
                 max_retries: int = 1, ray_config=None, tasks_per_cpu: int = 4):
        self.num_cpus = num_cpus
        self.max_in_flight = max_in_flight
        self.progress = progress
        self.max_retries = max_retries
        # Ray starts on the first map, not before: a stage whose output is current never needs it.
        self.ray_config = ray_config
        self.tasks_per_cpu = tasks_per_cpu
        self.nodes: Counter[str] = Counter()

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str = "",
            num_cpus: float | None = None) -> list[Any]:
        """`fn` of each item as Ray tasks of `num_cpus` CPUs each (default: the executor's), capped at
        the largest node's CPUs (a task asking for more would never be scheduled)."""
        import ray

        if not items:
            return []
        from llm.cluster import ensure_ray

        ensure_ray(self.ray_config)
        cpus = self.num_cpus if num_cpus is None else min(num_cpus, _largest_node_cpus())
        remote = ray.remote(num_cpus=cpus, max_retries=self.max_retries)(_call_each)
        fn_ref = ray.put(fn)
        slots = max(1, int(ray.available_resources().get("CPU", 1) // cpus))
        limit = self.max_in_flight or slots * 2
        bar = progress_bar(len(items), desc, self.progress)
        return _schedule(items, _chunks(len(items), slots * self.tasks_per_cpu), limit,
                         lambda part: remote.remote(fn_ref, part),
                         lambda refs: ray.wait(refs, num_returns=1)[0], _ray_outcome, self.nodes, bar)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool):
    """A progress bar over `total` items (tqdm's), or one that shows nothing: tqdm is imported only
    when a bar is shown (its automatic flavour imports asyncio, ~0.04 s for every process)."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="shard")


def _ray_outcome(ref) -> tuple[str, list]:
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        raise _unwrap(exc) from None


def _schedule(items: Sequence[Any], chunks: list[list[int]], limit: int, submit: Callable[[list], Any],
              ready: Callable[[list], Any], outcome: Callable[[Any], tuple[str, list]], nodes: Counter,
              bar) -> list[Any]:
    """Run `chunks` of `items`, at most `limit` at a time: `submit` starts one (a handle), `ready` says
    which handles are done, `outcome` gives one's (node, results) or raises its error. Results in input
    order; the first error is raised once the chunks already started have finished."""
    results: dict[int, Any] = {}
    in_flight: dict[Any, list[int]] = {}
    next_chunk = 0
    first_error: BaseException | None = None
    try:
        while next_chunk < len(chunks) or in_flight:
            while next_chunk < len(chunks) and len(in_flight) < limit and first_error is None:
                chunk = chunks[next_chunk]
                in_flight[submit([items[i] for i in chunk])] = chunk
                next_chunk += 1
            if not in_flight:
                break
            for handle in ready(list(in_flight)):
                chunk = in_flight.pop(handle)
                try:
                    node, values = outcome(handle)
                    results.update(zip(chunk, values))
                    nodes[node] += len(chunk)
                except BaseException as exc:
                    first_error = first_error or exc
                bar.update(len(chunk))
    finally:
        bar.close()
    if first_error is not None:
        raise first_error
    return [results[i] for i in range(len(items))]


def _chunks(n: int, tasks: int) -> list[list[int]]:
    """Positions 0..n-1 cut into at most about `tasks` runs of consecutive positions."""
    per_task = max(1, -(-n // tasks))
    return [list(range(i, min(i + per_task, n))) for i in range(0, n, per_task)]


def _largest_node_cpus() -> float:
    import ray

    return max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1) or 1


def task_cpus() -> int:
    """The CPUs the calling code may use: those Ray assigned to the task it runs in, else (in-process)
    the CPUs this process may run on."""
    import sys

    if _worker_process:  # a ProcessExecutor worker is one core
        return 1
    if "ray" in sys.modules:  # a Ray worker has imported it; a plain process need not pay for the import
        import ray

        if ray.is_initialized():
            assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if assigned:
                return max(1, int(assigned))
    return machine_cpus()


def machine_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# True in a ProcessExecutor worker (set by its initializer): `task_cpus` is then 1.
_worker_process = False


def call_each(fn, items) -> list:
    """`fn` of each item in order; a failure carries a note naming its item."""
    out = []
    for item in items:
        try:
            out.append(fn(item))
        except BaseException as exc:
            exc.add_note(f"while processing shard {getattr(item, 'name', repr(item)[:80])}")
            raise
    return out


def _call_each(fn, items) -> tuple[str, list]:
    import ray

    return ray.get_runtime_context().get_node_id(), call_each(fn, items)


def run_task(fn: Callable[..., Any], *args: Any, num_cpus: float = 1, num_gpus: float = 0, ray_config=None,
             **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` as one Ray task holding `num_cpus` CPUs and `num_gpus` GPUs, on whichever
    node has them; returns its result, or re-raises its error as the original exception.

    For a stage body that is one piece of work (a crawl, an evaluation): on a cluster it runs where the
    resources are, with the job's forwarded environment (`llm.cluster.forwarded_env`). Not retried:
    such a body writes its outputs as it goes and is rerun as a whole. With `ray.executor: processes`
    (this machine only, no Ray) it runs in this process."""
    if getattr(ray_config, "executor", "ray") == "processes":
        return fn(*args, **kwargs)
    import ray

    from llm.cluster import ensure_ray

    ensure_ray(ray_config)
    # Named after `fn` in Ray's task list and in the log lines it forwards.
    remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(_call).options(
        name=getattr(fn, "__name__", "run_task"))
    try:
        return ray.get(remote.remote(fn, args, kwargs))
    except ray.exceptions.RayTaskError as exc:
        raise _unwrap(exc) from None


def _call(fn, args, kwargs):
    return fn(*args, **kwargs)


def _unwrap(exc) -> BaseException:
    return exc.as_instanceof_cause() if hasattr(exc, "as_instanceof_cause") else exc
