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
    """Runs each item as a Ray task (`num_cpus` each), at most `max_in_flight` at a time so memory
    stays bounded by the shard size times the parallelism."""

    def __init__(self, num_cpus: float = 1, max_in_flight: int | None = None, progress: bool = False,
                 max_retries: int = 1):
        self.num_cpus = num_cpus
        self.max_in_flight = max_in_flight
        self.progress = progress
        self.max_retries = max_retries

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str = "") -> list[Any]:
        import ray

        if not items:
            return []
        remote = ray.remote(num_cpus=self.num_cpus, max_retries=self.max_retries)(_call)
        fn_ref = ray.put(fn)
        limit = self.max_in_flight or max(1, int(ray.available_resources().get("CPU", 1) // self.num_cpus) * 2)
        results: dict[int, Any] = {}
        in_flight: dict[Any, int] = {}
        next_item = 0
        bar = tqdm(total=len(items), desc=desc, disable=not self.progress, unit="shard")
        first_error: BaseException | None = None
        try:
            while next_item < len(items) or in_flight:
                while next_item < len(items) and len(in_flight) < limit and first_error is None:
                    in_flight[remote.remote(fn_ref, items[next_item])] = next_item
                    next_item += 1
                if not in_flight:
                    break
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                index = in_flight.pop(ready[0])
                try:
                    results[index] = ray.get(ready[0])
                except ray.exceptions.RayTaskError as exc:
                    first_error = first_error or _unwrap(exc, items[index])
                bar.update(1)
        finally:
            bar.close()
        if first_error is not None:
            raise first_error
        return [results[i] for i in range(len(items))]


def _call(fn, item):
    return fn(item)


def _unwrap(exc, item) -> BaseException:
    cause = exc.as_instanceof_cause() if hasattr(exc, "as_instanceof_cause") else exc
    name = getattr(item, "name", repr(item)[:80])
    cause.add_note(f"while processing shard {name}")
    return cause
