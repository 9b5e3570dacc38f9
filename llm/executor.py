"""Where shard work runs: in this process (debugging, tests) or as Ray tasks (default).

A stage hands a function and a list of items to `map`; it never knows where they run. Results come
back in input order; failures re-raise in the caller after in-flight work finishes, with the item named.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from tqdm.auto import tqdm


class LocalExecutor:
    """Runs items one after another in this process."""

    def __init__(self, progress: bool = False):
        self.progress = progress

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str = "") -> list[Any]:
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
    one item."""

    def __init__(self, num_cpus: float = 1, max_in_flight: int | None = None, progress: bool = False,
                 max_retries: int = 1, ray_config=None, tasks_per_cpu: int = 4):
        self.num_cpus = num_cpus
        self.max_in_flight = max_in_flight
        self.progress = progress
        self.max_retries = max_retries
        # Ray starts on the first map, not before: a stage whose output is current never needs it.
        self.ray_config = ray_config
        self.tasks_per_cpu = tasks_per_cpu

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str = "") -> list[Any]:
        import ray

        if not items:
            return []
        from llm.cluster import ensure_ray

        ensure_ray(self.ray_config)
        remote = ray.remote(num_cpus=self.num_cpus, max_retries=self.max_retries)(_call_each)
        fn_ref = ray.put(fn)
        slots = max(1, int(ray.available_resources().get("CPU", 1) // self.num_cpus))
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
                    results.update(zip(chunk, ray.get(ready[0])))
                except ray.exceptions.RayTaskError as exc:
                    first_error = first_error or _unwrap(exc)
                bar.update(len(chunk))
        finally:
            bar.close()
        if first_error is not None:
            raise first_error
        return [results[i] for i in range(len(items))]


def _call_each(fn, items):
    out = []
    for item in items:
        try:
            out.append(fn(item))
        except BaseException as exc:
            exc.add_note(f"while processing shard {getattr(item, 'name', repr(item)[:80])}")
            raise
    return out


def _unwrap(exc) -> BaseException:
    return exc.as_instanceof_cause() if hasattr(exc, "as_instanceof_cause") else exc
