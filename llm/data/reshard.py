"""Final sharding: cut the cleaned corpus into Parquet shards of about `target_bytes` of text each.

Cut points are planned from per-row text sizes (collected per shard in parallel) before any document
is moved, so each output shard is then written by an independent task and the result does not depend
on how many tasks run at once.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from llm import storage
from llm.config import ShardConfig
from llm.data.dataset import Counts, ShardRecord, ShardTask, read_manifest, run_shard_stage
from llm.data.ingest import write_shard
from llm.data.steps import empty_quarantine


def _row_sizes(in_uri: str, data_rel: str) -> list[int]:
    text = storage.read_parquet(storage.join(in_uri, data_rel), columns=["text"]).column("text")
    return pc.binary_length(pc.cast(text, pa.binary())).to_pylist()


def plan_cuts(sizes: list[tuple[str, list[int]]], target_bytes: int) -> list[list[tuple[str, int, int]]]:
    """Group (shard, row sizes) into output shards: lists of (input shard, start row, stop row)."""
    outputs: list[list[tuple[str, int, int]]] = []
    current: list[tuple[str, int, int]] = []
    filled = 0
    for shard, row_sizes in sizes:
        start = 0
        for i, size in enumerate(row_sizes):
            filled += size
            if filled >= target_bytes:
                current.append((shard, start, i + 1))
                outputs.append(current)
                current, filled, start = [], 0, i + 1
        if start < len(row_sizes):
            current.append((shard, start, len(row_sizes)))
    if current:
        outputs.append(current)
    return outputs


def run_reshard(in_uri: str, out_uri: str, cfg: ShardConfig, config_hash: str, executor) -> dict:
    manifest = read_manifest(in_uri)
    shards = [(s["name"], s["files"]["data"]) for s in manifest["shards"]]
    data_rel = dict(shards)
    sizes = executor.map(lambda s: _row_sizes(in_uri, s[1]), shards, desc="shard: sizes")
    plan = plan_cuts([(name, sz) for (name, _), sz in zip(shards, sizes)], cfg.target_bytes)

    def make_shard(task: ShardTask) -> ShardRecord:
        parts = []
        for shard, start, stop in task.payload:
            table = storage.read_parquet(storage.join(in_uri, data_rel[shard]))
            parts.append(table.slice(start, stop - start))
        docs = pa.concat_tables(parts, promote_options="default") if parts else pa.table({})
        counts = Counts(read=docs.num_rows, kept=docs.num_rows)
        return write_shard(out_uri, task.name, list(task.inputs), docs, _empty_rejected(docs),
                           empty_quarantine(), counts, {"shard": counts}, cfg.row_group_rows, cfg.compression,
                           extra={"slices": [list(p) for p in task.payload]})

    tasks = [ShardTask(f"part-{i:05d}", tuple(sorted({s for s, _, _ in cut})), tuple(cut))
             for i, cut in enumerate(plan)]
    return run_shard_stage("shard", out_uri, tasks, make_shard, config_hash, executor, [in_uri])


def _empty_rejected(docs: pa.Table) -> pa.Table:
    from llm.data import schema

    return schema.reject_schema(docs.schema).empty_table()
