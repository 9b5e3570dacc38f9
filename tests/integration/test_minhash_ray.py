"""The MinHash stage on Ray: every phase as Ray tasks gives byte-identical output to the in-process run."""

from __future__ import annotations


import pytest

from llm.config import MinHashConfig, ShardConfig
from llm.data.minhash.planted import planted_corpus, word_pool
from llm.data.minhash.stage import run_minhash_dedup
from llm.executor import LocalExecutor, RayExecutor
from tests.unit.data.minhash.conftest import write_dataset
from tests.trees import output_tree

pytestmark = pytest.mark.integration




def test_ray_run_matches_local_run(tmp_path, shared_data, ray_local):
    corpus = planted_corpus(word_pool(shared_data), 400, seed=3)
    n = len(corpus.texts)
    urls = [f"https://example.org/{i % (n - 5)}" for i in range(n)]  # five repeated URLs too
    write_dataset(str(tmp_path / "in"), corpus.texts, shards=4, urls=urls)
    cfg = MinHashConfig(min_buckets=3)
    ray_m = run_minhash_dedup(str(tmp_path / "in"), str(tmp_path / "ray"), cfg, ShardConfig(), RayExecutor())
    local_m = run_minhash_dedup(str(tmp_path / "in"), str(tmp_path / "local"), cfg, ShardConfig(), LocalExecutor())
    assert ray_m == local_m
    dropped = ray_m["totals"]["counts"]["dropped"]
    assert dropped["near_duplicate"] > 20 and dropped["url_duplicate"] >= 1
    assert output_tree(tmp_path / "ray") == output_tree(tmp_path / "local")
    assert not (tmp_path / "ray" / "_work").exists()
