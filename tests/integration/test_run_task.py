"""`run_task`: one call as one Ray task (the crawl and evaluate stages), its result or its own error."""

from __future__ import annotations

import os

import pytest

from llm.executor import run_task

pytestmark = pytest.mark.integration


class Refused(ValueError):
    pass


def _where(x: int, scale: int = 1) -> tuple[int, int, str]:
    import ray

    return x * scale, os.getpid(), ray.get_runtime_context().get_task_name()


def _refuse(why: str) -> None:
    raise Refused(why)


def test_a_call_runs_as_one_named_ray_task_and_returns_its_result(ray_local):
    value, pid, name = run_task(_where, 21, scale=2)
    assert value == 42 and pid != os.getpid() and name == "_where"


def test_its_error_comes_back_as_the_original_exception(ray_local):
    with pytest.raises(Refused, match="no site"):
        run_task(_refuse, "no site")
