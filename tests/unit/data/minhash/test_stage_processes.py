"""The MinHash stage on worker processes (`ray.executor: processes`) writes exactly what it writes in
this process, and a stage task built by tasks/runtime runs its shards on those workers, not Ray."""

import os

from llm.config import MinHashConfig, PipelineConfig, ShardConfig
from llm.data.minhash.stage import run_minhash_dedup
from llm.executor import LocalExecutor, ProcessExecutor
from llm.layout import Layout
from tests.trees import output_tree
from tests.unit.data.minhash.conftest import rejected, write_dataset


def test_worker_processes_write_the_same_kept_and_rejected_rows(tmp_path, planted):
    write_dataset(str(tmp_path / "in"), planted.texts[:900], shards=4)
    cfg = MinHashConfig(keeper="longest", min_buckets=3)
    local = run_minhash_dedup(str(tmp_path / "in"), str(tmp_path / "a"), cfg, ShardConfig(), LocalExecutor())
    with ProcessExecutor(workers=2) as ex:
        run_minhash_dedup(str(tmp_path / "in"), str(tmp_path / "b"), cfg, ShardConfig(), ex)
        assert sum(ex.nodes.values()) > 4  # every map of the stage ran on the workers
    assert local["totals"]["counts"]["dropped"]["near_duplicate"] > 20
    assert rejected(str(tmp_path / "a")) == rejected(str(tmp_path / "b"))
    assert output_tree(tmp_path / "a") == output_tree(tmp_path / "b")  # kept shards, manifest: byte for byte


def test_a_stage_task_honours_ray_executor_processes(tmp_path, planted, monkeypatch):
    from llm import cluster
    from llm.executor import run_task
    from tasks.data import minhash_dedup
    from tasks.runtime import stage

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was asked for under ray.executor: processes")

    monkeypatch.setattr(cluster, "ensure_ray", no_ray)  # another test may have started Ray in this process

    cfg = PipelineConfig(work_dir=str(tmp_path / "work"), ray={"executor": "processes", "num_cpus": 2},
                         tracking={"enabled": False})
    with stage(cfg, None, "probe") as ctx:
        assert isinstance(ctx.executor, ProcessExecutor) and ctx.executor.workers == 2
        assert os.getpid() not in ctx.executor.map(lambda _: os.getpid(), [1, 2, 3])
    write_dataset(Layout.for_work_dir(cfg.work_dir).dedup, planted.texts[:300], shards=2)
    summary = minhash_dedup.fn(cfg)
    assert summary["counts"]["read"] == 300 and summary["counts"]["dropped"]["near_duplicate"] > 0
    assert run_task(os.getpid, ray_config=cfg.ray) == os.getpid()  # a one-piece stage body runs right here
