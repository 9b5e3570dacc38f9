"""Where shard work runs: in this process (debugging, tests) or as Ray tasks (default).

A stage hands a function and a list of items to `map`; it never knows where they run. Results come
back in input order; failures re-raise in the caller after in-flight work finishes, with the item named.
`run_task` runs one whole call (a stage that is a single piece of work) as one Ray task.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm


class LocalExecutor:
    """Runs items one after another in this process."""

    def __init__(self, progress: bool = False):
        self.progress = progress

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str = "",
            num_cpus: float | None = None) -> list[Any]:
        """`fn` of each item, in order; `num_cpus` is for executors that reserve CPUs (ignored here)."""
        out = []
        for item in tqdm(items, desc=desc, disable=not self.progress or not items, unit="shard"):
            out.append(fn(item))
        return out


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
        per_task = max(1, -(-len(items) // (slots * self.tasks_per_cpu)))
        chunks = [list(range(i, min(i + per_task, len(items)))) for i in range(0, len(items), per_task)]
        results: dict[int, Any] = {}
        in_flight: dict[Any, list[int]] = {}
        next_chunk = 0
        bar = tqdm(total=len(items), desc=desc, disable=not self.progress, unit="shard")
        first_error: BaseException | None = None
        try:
            while next_chunk < len(chunks) or in_flight:
                while next_chunk < len(chunks) and len(in_flight) < limit and first_error is None:
                    chunk = chunks[next_chunk]
                    in_flight[remote.remote(fn_ref, [items[i] for i in chunk])] = chunk
                    next_chunk += 1
                if not in_flight:
                    break
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                chunk = in_flight.pop(ready[0])
                try:
                    node, values = ray.get(ready[0])
                    results.update(zip(chunk, values))
                    self.nodes[node] += len(chunk)
                except ray.exceptions.RayTaskError as exc:
                    first_error = first_error or _unwrap(exc)
                bar.update(len(chunk))
        finally:
            bar.close()
        if first_error is not None:
            raise first_error
        return [results[i] for i in range(len(items))]


def _largest_node_cpus() -> float:
    import ray

    return max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1) or 1


def task_cpus() -> int:
    """The CPUs the calling code may use: those Ray assigned to the task it runs in, else (in-process)
    the CPUs this process may run on."""
    import os
    import sys

    if "ray" in sys.modules:  # a Ray worker has imported it; a plain process need not pay for the import
        import ray

        if ray.is_initialized():
            assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if assigned:
                return max(1, int(assigned))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _call_each(fn, items) -> tuple[str, list]:
    import ray

    out = []
    for item in items:
        try:
            out.append(fn(item))
        except BaseException as exc:
            exc.add_note(f"while processing shard {getattr(item, 'name', repr(item)[:80])}")
            raise
    return ray.get_runtime_context().get_node_id(), out


def run_task(fn: Callable[..., Any], *args: Any, num_cpus: float = 1, num_gpus: float = 0, ray_config=None,
             **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` as one Ray task holding `num_cpus` CPUs and `num_gpus` GPUs, on whichever
    node has them; returns its result, or re-raises its error as the original exception.

    For a stage body that is one piece of work (a crawl, an evaluation): on a cluster it runs where the
    resources are, with the job's forwarded environment (`llm.cluster.forwarded_env`). Not retried:
    such a body writes its outputs as it goes and is rerun as a whole."""
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
