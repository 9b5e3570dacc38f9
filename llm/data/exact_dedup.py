"""Exact deduplication on a hash of the normalized text, as a three-phase map/shuffle/filter on Ray.

1. map: each shard's (hash, shard, row) rows, written to a work folder (a few dozen bytes a document).
2. shuffle/reduce: each hash-range bucket is grouped in its own task; the keeper of a group is the
   copy that comes first in input order (shard name, then row), so the choice is the same on every run
   and the earliest-ingested copy survives.
3. filter: each shard drops its duplicates, writing them to `rejected/` with the keeper's id.

No process ever holds more than one bucket of hashes or one shard of documents.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from llm import storage
from llm.config import ExactDedupConfig, ShardConfig
from llm.data import schema
from llm.data.dataset import Counts, ShardRecord, ShardTask, is_done, read_manifest, run_shard_stage
from llm.data.ingest import write_shard
from llm.data.steps import empty_quarantine, rejected_rows

_HASHES = pa.schema([("hash", pa.string()), ("bucket", pa.int32()), ("shard", pa.string()),
                     ("row", pa.int64()), ("id", pa.string())])


def _bucket(h: str, num_buckets: int) -> int:
    return int(h[:8], 16) % num_buckets


def _map_hashes(in_uri: str, work: str, shard: str, data_rel: str, num_buckets: int) -> str:
    docs = storage.read_parquet(storage.join(in_uri, data_rel), columns=["id", "text"])
    hashes = [schema.text_hash(t) for t in docs.column("text").to_pylist()]
    table = pa.table({
        "hash": pa.array(hashes, pa.string()),
        "bucket": pa.array([_bucket(h, num_buckets) for h in hashes], pa.int32()),
        "shard": pa.array([shard] * docs.num_rows, pa.string()),
        "row": pa.array(range(docs.num_rows), pa.int64()),
        "id": docs.column("id"),
    }, schema=_HASHES)
    uri = storage.join(work, "hashes", f"{shard}.parquet")
    storage.write_parquet(uri, table)
    return uri


def _reduce_bucket(hash_files: list[str], work: str, bucket: int) -> str:
    parts = []
    for uri in hash_files:
        t = storage.read_parquet(uri)
        parts.append(t.filter(pc.equal(t.column("bucket"), bucket)))
    table = pa.concat_tables(parts) if parts else _HASHES.empty_table()
    # Sort so the first row of every hash group is the keeper (input order: shard, then row).
    table = table.sort_by([("hash", "ascending"), ("shard", "ascending"), ("row", "ascending")])
    hashes = table.column("hash").to_pylist()
    ids = table.column("id").to_pylist()
    shard_col = table.column("shard").to_pylist()
    row_col = table.column("row").to_pylist()
    dup_shard, dup_row, dup_keeper, dup_size = [], [], [], []
    start = 0
    while start < len(hashes):
        end = start + 1
        while end < len(hashes) and hashes[end] == hashes[start]:
            end += 1
        for i in range(start + 1, end):
            dup_shard.append(shard_col[i])
            dup_row.append(row_col[i])
            dup_keeper.append(ids[start])
            dup_size.append(end - start)
        start = end
    out = pa.table({"shard": pa.array(dup_shard, pa.string()), "row": pa.array(dup_row, pa.int64()),
                    "keeper": pa.array(dup_keeper, pa.string()), "group_size": pa.array(dup_size, pa.int64())})
    uri = storage.join(work, "duplicates", f"bucket-{bucket:05d}.parquet")
    storage.write_parquet(uri, out)
    return uri


def run_exact_dedup(in_uri: str, out_uri: str, cfg: ExactDedupConfig, shard_cfg: ShardConfig,
                    config_hash: str, executor) -> dict:
    """Deduplicate the dataset at `in_uri` into `out_uri`; returns the output manifest."""
    manifest = read_manifest(in_uri)
    shards = [(s["name"], s["files"]["data"]) for s in manifest["shards"]]
    work = storage.join(out_uri, "_work")
    nb = cfg.num_buckets
    tasks = [ShardTask(name, (name,), (name, rel)) for name, rel in shards]
    if cfg.enabled and not all(is_done(out_uri, t.name, config_hash) for t in tasks):
        hash_files = executor.map(lambda s: _map_hashes(in_uri, work, s[0], s[1], nb), shards, desc="dedup: hash")
        dup_files = executor.map(lambda b: _reduce_bucket(hash_files, work, b), list(range(nb)), desc="dedup: group")
    else:
        dup_files = []

    def make_shard(task: ShardTask) -> ShardRecord:
        name, data_rel = task.payload
        docs = storage.read_parquet(storage.join(in_uri, data_rel))
        keeper = {}
        for uri in dup_files:
            d = storage.read_parquet(uri)
            d = d.filter(pc.equal(d.column("shard"), name))
            keeper.update(zip(d.column("row").to_pylist(), zip(d.column("keeper").to_pylist(),
                                                               d.column("group_size").to_pylist())))
        hashes = pa.array([schema.text_hash(t) for t in docs.column("text").to_pylist()], pa.string())
        docs = docs.append_column("text_hash", hashes)
        is_dup = pa.array([i in keeper for i in range(docs.num_rows)], pa.bool_())
        kept = docs.filter(pc.invert(is_dup))
        dups = docs.filter(is_dup)
        rows = [i for i in range(docs.num_rows) if i in keeper]
        rejected = rejected_rows(
            dups.drop_columns(["text_hash"]), "exact_dedup", ["exact_duplicate"] * len(rows),
            [float(keeper[i][1]) for i in rows], [None] * len(rows), [keeper[i][0] for i in rows])
        counts = Counts(read=docs.num_rows, kept=kept.num_rows,
                        dropped={"exact_duplicate": len(rows)} if rows else {})
        return write_shard(out_uri, name, [name], kept, rejected, empty_quarantine(), counts,
                           {"exact_dedup": counts}, shard_cfg.row_group_rows, shard_cfg.compression)

    result = run_shard_stage("exact_dedup", out_uri, tasks, make_shard, config_hash, executor, [in_uri])
    storage.delete(work)
    return result
