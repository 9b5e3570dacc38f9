"""Final sharding: cut the cleaned corpus into Parquet shards of about `target_bytes` of text each.

Cut points are planned from per-row text sizes (collected per shard in parallel) before any document
is moved, so each output shard is then written by an independent task and the result does not depend
on how many tasks run at once.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from llm import storage, versions
from llm.config import ShardConfig, stable_hash
from llm.data.dataset import Counts, ShardRecord, ShardTask, read_manifest, run_shard_stage, shard_identity, write_shard
from llm.data.steps import empty_quarantine
from llm.lineage import identity, of_input


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


def run_reshard(in_uri: str, out_uri: str, cfg: ShardConfig, executor) -> dict:
    """Cut the dataset at `in_uri` into shards of about `cfg.target_bytes` as a new version of `out_uri`.
    Each output shard is named and keyed by the input slices it holds, so when the corpus grows at its
    end every full shard before the growth is reused."""
    started = time.time()
    in_root = versions.split(in_uri)[0]
    manifest = read_manifest(in_uri)
    in_version, in_recipe = of_input(manifest)
    ident = identity("shard", cfg, {"docs": in_version}, {"docs": in_recipe})
    reused = versions.reuse(out_uri, ident)
    if reused is not None:
        return reused
    shards = [(s["name"], s["files"]["data"]) for s in manifest["shards"]]
    data_rel = dict(shards)
    key_of_input = {s["name"]: shard_identity(s) for s in manifest["shards"]}
    sizes = executor.map(lambda s: _row_sizes(in_root, s[1]), shards, desc="shard: sizes")
    plan = plan_cuts([(name, sz) for (name, _), sz in zip(shards, sizes)], cfg.target_bytes)

    def make_shard(task: ShardTask) -> ShardRecord:
        parts = []
        for shard, start, stop in task.payload:
            table = storage.read_parquet(storage.join(in_root, data_rel[shard]))
            parts.append(table.slice(start, stop - start))
        docs = pa.concat_tables(parts, promote_options="default") if parts else pa.table({})
        counts = Counts(read=docs.num_rows, kept=docs.num_rows)
        return write_shard(out_uri, task.name, list(task.inputs), docs, _empty_rejected(docs),
                           empty_quarantine(), counts, {"shard": counts}, cfg.row_group_rows, cfg.compression,
                           extra={"slices": [list(p) for p in task.payload]}, key=task.key)

    tasks = []
    for cut in plan:
        slices = [[key_of_input[s], start, stop] for s, start, stop in cut]
        tasks.append(ShardTask(f"shard-{stable_hash(slices)[:12]}", tuple(dict.fromkeys(s for s, _, _ in cut)),
                               tuple(cut), ident.shard_key(slices=slices)))
    return run_shard_stage(ident, out_uri, tasks, make_shard, executor,
                           {"docs": versions.pinned(in_root, in_version)}, started)


def _empty_rejected(docs: pa.Table) -> pa.Table:
    from llm.data import schema

    return schema.reject_schema(docs.schema).empty_table()
