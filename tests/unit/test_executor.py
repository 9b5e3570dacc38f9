"""The process executor: results in input order from forked workers that outlive a map, closures and
lambdas, a failure re-raised as itself with its item named, one core per worker, clean shutdown."""

from __future__ import annotations

import os
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from llm.config import RayConfig
from llm.executor import ProcessExecutor, task_cpus


class Bad(ValueError):
    pass


@pytest.fixture
def executor():
    with ProcessExecutor(workers=2, tasks_per_cpu=2) as ex:
        yield ex


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children()}


def test_results_come_in_input_order_from_workers_in_runs(executor):
    offset = 7  # a closure: the function travels by value (cloudpickle)
    out = executor.map(lambda i: (i + offset, os.getpid()), list(range(200)))
    assert [x for x, _ in out] == [i + 7 for i in range(200)]
    pids = {pid for _, pid in out}
    assert os.getpid() not in pids and pids <= _children()  # which worker takes a run is the OS's choice
    # 2 workers x 2 runs each: 4 runs of 50 consecutive items, each in one process
    assert all(len({pid for _, pid in out[i:i + 50]}) == 1 for i in range(0, 200, 50))
    assert sum(executor.nodes.values()) == 200 and len(executor.nodes) == 1


def test_the_pool_starts_on_the_first_map_and_serves_later_ones(executor):
    before = _children()
    assert executor.map(len, []) == [] and _children() == before  # nothing to run: no workers
    first = {pid for pid in executor.map(lambda _: os.getpid(), list(range(20)))}
    workers = _children() - before
    assert first <= workers and len(workers) == 2
    second = {pid for pid in executor.map(lambda _: os.getpid(), list(range(20)))}
    assert second <= workers and _children() - before == workers


def test_start_forks_the_workers_before_any_map_and_maps_use_them(executor):
    before = _children()
    executor.start()
    deadline = time.monotonic() + 30
    while len(_children() - before) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = _children() - before
    assert len(workers) == 2  # up before the first map
    assert {pid for pid in executor.map(lambda _: os.getpid(), list(range(20)))} <= workers
    assert _children() - before == workers


def test_a_failure_is_the_original_error_naming_its_item_after_running_work_finishes(executor, tmp_path):
    def fn(i):
        if i == 37:
            raise Bad("no")
        time.sleep(0.002)
        (tmp_path / str(i)).touch()
        return i

    with pytest.raises(Bad) as info:
        executor.map(fn, list(range(100)))
    assert type(info.value) is Bad and str(info.value) == "no"
    assert "while processing shard 37" in "\n".join(getattr(info.value, "__notes__", []))
    # The run holding item 37 (items 25-49) stopped there; the runs already started (all four: two
    # running, two queued) finished before the error came back.
    done = {int(p.name) for p in tmp_path.iterdir()}
    assert done == set(range(37)) | set(range(50, 100))
    assert executor.map(lambda i: i * 2, [1, 2, 3]) == [2, 4, 6]  # the pool still serves


def test_a_dead_worker_fails_the_map_and_the_next_map_starts_new_workers(executor):
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool):
        executor.map(lambda i: os._exit(3) if i == 5 else i, list(range(10)))
    assert executor.map(lambda i: i + 1, [1, 2]) == [2, 3]


def test_each_worker_is_one_core(executor):
    assert executor.map(lambda _: task_cpus(), list(range(8))) == [1] * 8


def test_items_asking_for_every_cpu_run_one_at_a_time(executor):
    def span(_):
        start = time.monotonic()
        time.sleep(0.1)
        return start, time.monotonic()

    alone = sorted(executor.map(span, list(range(4)), num_cpus=2))
    assert all(a[1] <= b[0] for a, b in zip(alone, alone[1:]))  # no two overlap
    together = sorted(executor.map(span, list(range(4))))
    assert any(a[1] > b[0] for a, b in zip(together, together[1:]))  # one CPU each: two at a time


def test_workers_follow_ray_num_cpus_or_the_cpus_this_process_may_use():
    assert ProcessExecutor(ray_config=RayConfig(num_cpus=3)).workers == 3
    assert ProcessExecutor(ray_config=RayConfig()).workers == len(os.sched_getaffinity(0))


def test_close_stops_the_workers():
    before = _children()  # other tests' servers and Ray may be children of this process too
    ex = ProcessExecutor(workers=2)
    ex.map(abs, [-1, -2, -3, -4])
    workers = [psutil.Process(pid) for pid in _children() - before]
    assert len(workers) == 2
    ex.close()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


def _arrow_and_compiled(seed: int) -> tuple[int, int]:
    """Work that uses pyarrow's thread pool and a compiled (numba) kernel."""
    from llm.data.minhash.shingles import word_shingles

    rng = np.random.default_rng(seed)
    table = pa.table({"x": rng.integers(0, 1000, 200_000)})
    total = pc.sum(pc.multiply(table.column("x"), 2)).as_py()  # multi-threaded over chunks
    return total, int(word_shingles([f"a b c d e {seed}"] * 3, 5).counts.sum())


@pytest.mark.timeout(120)  # a deadlocked fork would hang here
def test_forked_workers_run_arrow_and_compiled_code_after_the_parent_started_their_threads(executor):
    expected = [_arrow_and_compiled(s) for s in range(6)]  # the parent's pools and kernels are up
    assert executor.map(_arrow_and_compiled, list(range(6))) == expected
