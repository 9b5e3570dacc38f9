"""The Ray executor: many small items in few tasks, results in input order, a failure names its item."""

from __future__ import annotations

import os

import pytest

from llm.executor import RayExecutor

pytestmark = pytest.mark.integration


class Bad(ValueError):
    pass


def test_many_items_run_in_few_tasks_in_order(ray_local):
    out = RayExecutor(tasks_per_cpu=2).map(lambda i: (i * i, os.getpid()), list(range(200)))
    assert [x for x, _ in out] == [i * i for i in range(200)]
    # 2 CPUs x 2 tasks each: runs of 50 consecutive items share a process
    runs = [{pid for _, pid in out[i:i + 50]} for i in range(0, 200, 50)]
    assert all(len(r) == 1 for r in runs)


def test_a_failure_names_the_item_and_is_the_original_error(ray_local):
    def fn(i):
        if i == 37:
            raise Bad("no")
        return i

    with pytest.raises(Bad) as info:
        RayExecutor().map(fn, list(range(100)))
    assert "while processing shard 37" in "\n".join(getattr(info.value, "__notes__", []))
