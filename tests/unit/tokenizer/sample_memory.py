"""Measures the sample's memory over a corpus far larger than the bound, in a process of its own
(its Arrow memory pool is swapped for a counting proxy, which must outlive every buffer it hands out,
so the process ends with `os._exit`).

    python -m tests.unit.tokenizer.sample_memory <scratch folder> <shared data folder> [corpus MB]

Prints one JSON object: the corpus's text bytes; the peaks (Python heap by tracemalloc, Arrow by the
pool) of building the sample with the in-process executor (the driver, with each shard's work done
in-process too), of `sample_shard` on one shard, and of streaming the sample's texts."""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

import pyarrow as pa

from llm.executor import LocalExecutor
from llm.tokenizer.sample import SampleTexts, SamplePlan, build_sample, sample_shard
from tests.unit.tokenizer.sample_corpus import write_big_corpus

SAMPLE_BYTES = 2_000_000
SHARDS = 8  # ~19 MB of text each


def _measure(fn):
    """(fn's result, Python peak bytes, Arrow peak bytes, seconds)."""
    gc.collect()
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    pa.set_memory_pool(pool)
    _measure.pools.append(pool)  # kept alive until the process ends
    tracemalloc.start()
    started = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, peak, pool.max_memory(), seconds


_measure.pools = []


def main(scratch: str, shared: str, corpus_mb: float) -> dict:
    files, corpus = write_big_corpus(f"{scratch}/docs", Path(shared), int(corpus_mb * 1e6), SHARDS)
    ex = LocalExecutor()
    (parts, section), driver_py, driver_arrow, seconds = _measure(
        lambda: build_sample(files, f"{scratch}/sample", SAMPLE_BYTES, {"code": 0.25}, 0, ex))
    plan = SamplePlan.from_manifest(section)
    _, shard_py, shard_arrow, _ = _measure(lambda: sample_shard(files[0], f"{scratch}/one.parquet", plan))
    streamed, stream_py, stream_arrow, _ = _measure(lambda: sum(len(t) for t in SampleTexts(tuple(parts))))
    return {"corpus_bytes": corpus, "sampled_bytes": section["bytes"], "seconds": round(seconds, 2),
            "driver_py_peak": driver_py, "driver_arrow_peak": driver_arrow, "shard_py_peak": shard_py,
            "shard_arrow_peak": shard_arrow, "stream_py_peak": stream_py, "stream_arrow_peak": stream_arrow,
            "streamed_chars": streamed, "shard_text_bytes": corpus // SHARDS, "strata": section["strata"]}


if __name__ == "__main__":
    result = main(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 150)
    print(json.dumps(result), flush=True)
    os._exit(0)
