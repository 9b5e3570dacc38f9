"""Exact deduplication on a hash of the normalized text, as a three-phase map/shuffle/filter on Ray.

1. map: each shard's (hash, bucket, row, id) rows, cached by the input shard's key (a few dozen bytes a
   document), so a refresh hashes only its new shards.
2. shuffle/reduce: each hash-range bucket is grouped in its own task; the keeper of a group is the
   copy that comes first in input order (shard, then row), so the choice is the same on every run and
   the earliest-ingested copy survives. Duplicates go to their shard's partition of the shuffle.
3. filter: each shard drops its duplicates, writing them to `rejected/` with the keeper's id; a shard
   whose input and duplicates are what an earlier version had is reused, not written again.

No process ever holds more than one bucket of hashes or one shard of documents.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llm import storage, versions
from llm.config import ExactDedupConfig, ShardConfig
from llm.data import schema
from llm.data.dataset import (Counts, ShardRecord, ShardTask, read_manifest, run_shard_stage, shard_identity,
                              write_shard, writer_config)
from llm.data.minhash import partitions
from llm.data.steps import empty_quarantine, rejected_rows
from llm.lineage import identity, of_input

# Per input shard: a few dozen bytes a document, cached by the input shard's key so a refresh hashes
# only new shards.
_HASHES = pa.schema([("hash", pa.string()), ("bucket", pa.int32()), ("row", pa.int64()), ("id", pa.string())])
_DUPLICATES = {"row": "int64", "keeper": "<U1", "size": "int64"}
# Hashes one grouping task holds at most (hash, id, row and sort temporaries: ~200 bytes each).
_HASHES_PER_BUCKET = 1_000_000


def _hash_file(out_uri: str, shard: dict, num_buckets: int) -> str:
    return storage.join(out_uri, versions.CACHE, "exact_hashes", f"{num_buckets}", f"{shard_identity(shard)}.parquet")


def _map_hashes(in_root: str, uri: str, shard: dict, num_buckets: int) -> None:
    docs = storage.read_parquet(storage.join(in_root, shard["files"]["data"]), columns=["id", "text"])
    hashes = [schema.text_hash(t) for t in docs.column("text").to_pylist()]
    table = pa.table({"hash": pa.array(hashes, pa.string()),
                      "bucket": pa.array([int(h[:8], 16) % num_buckets for h in hashes], pa.int32()),
                      "row": pa.array(range(docs.num_rows), pa.int64()), "id": docs.column("id")}, schema=_HASHES)
    storage.write_parquet(uri, table)


def _reduce_bucket(hash_files: list[str], work: str, bucket: int) -> None:
    """Group one bucket's hashes; every copy after the first in input order (shard, then row) is a
    duplicate, sent to its shard's partition with the keeper's id and the group's size."""
    parts = []
    for order, uri in enumerate(hash_files):
        t = storage.read_parquet(uri)
        t = t.filter(pc.equal(t.column("bucket"), bucket))
        parts.append(t.append_column("order", pa.array(np.full(t.num_rows, order, np.int64))))
    table = pa.concat_tables(parts) if parts else _HASHES.append(pa.field("order", pa.int64())).empty_table()
    table = table.sort_by([("hash", "ascending"), ("order", "ascending"), ("row", "ascending")])
    hashes = table.column("hash").to_numpy(zero_copy_only=False)
    if not len(hashes):
        return
    first = np.r_[True, hashes[1:] != hashes[:-1]]
    group = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    sizes = np.diff(np.r_[starts, len(hashes)])
    dup = ~first
    ids = table.column("id").to_numpy(zero_copy_only=False)
    order = table.column("order").to_numpy()
    partitions.write_partitioned(storage.join(work, "duplicates"), f"{bucket:05d}", order[dup], len(hash_files),
                                 row=table.column("row").to_numpy()[dup],
                                 keeper=ids[starts[group[dup]]].astype(str), size=sizes[group[dup]])


def _duplicates_of(work: str, order: int) -> dict[int, tuple[str, int]]:
    """row -> (keeper id, group size) for the duplicates in the shard at position `order`."""
    d = partitions.read_partition(storage.join(work, "duplicates"), order, _DUPLICATES)
    return dict(sorted(zip(d["row"].tolist(), zip(d["keeper"].tolist(), d["size"].tolist()))))


def run_exact_dedup(in_uri: str, out_uri: str, cfg: ExactDedupConfig, shard_cfg: ShardConfig, executor) -> dict:
    """Deduplicate the dataset at `in_uri` (current version, or `uri@version`) into a new version of
    `out_uri`; returns its manifest. A shard's output is reused when its input and the duplicate
    decisions about its rows are what an earlier version had."""
    started = time.time()
    in_root = versions.split(in_uri)[0]
    manifest = read_manifest(in_uri)
    in_version, in_recipe = of_input(manifest)
    ident = identity("exact_dedup", {"exact_dedup": cfg.model_dump(mode="json"),
                                     "writer": writer_config(shard_cfg)},
                     {"docs": in_version}, {"docs": in_recipe})
    reused = versions.reuse(out_uri, ident)
    if reused is not None:
        return reused
    shards = manifest["shards"]
    work = storage.join(out_uri, "_work", ident.version)
    if cfg.enabled:
        total = sum(s["rows"] for s in shards)
        nb = cfg.num_buckets or max(1, -(-total // _HASHES_PER_BUCKET))
        hash_files = [_hash_file(out_uri, s, nb) for s in shards]
        missing = [(s, f) for s, f in zip(shards, hash_files) if not storage.exists(f)]
        executor.map(lambda x: _map_hashes(in_root, x[1], x[0], nb), missing, desc="dedup: hash")
        executor.map(lambda b: _reduce_bucket(hash_files, work, b), list(range(nb)), desc="dedup: group")
    tasks = [ShardTask(s["name"], (s["name"],), (order, s)) for order, s in enumerate(shards)]

    def key_of(task: ShardTask) -> str:
        order, shard = task.payload
        dups = _duplicates_of(work, order) if cfg.enabled else {}
        return ident.shard_key(input=shard_identity(shard), duplicates=[[r, k, n] for r, (k, n) in dups.items()])

    def make_shard(task: ShardTask) -> ShardRecord:
        order, shard = task.payload
        docs = storage.read_parquet(storage.join(in_root, shard["files"]["data"]))
        keeper = _duplicates_of(work, order) if cfg.enabled else {}
        hashes = pa.array([schema.text_hash(t) for t in docs.column("text").to_pylist()], pa.string())
        docs = docs.append_column("text_hash", hashes)
        is_dup = pa.array([i in keeper for i in range(docs.num_rows)], pa.bool_())
        kept = docs.filter(pc.invert(is_dup))
        dups = docs.filter(is_dup)
        rows = list(keeper)
        rejected = rejected_rows(
            dups.drop_columns(["text_hash"]), "exact_dedup", ["exact_duplicate"] * len(rows),
            [float(keeper[i][1]) for i in rows], [None] * len(rows), [keeper[i][0] for i in rows])
        counts = Counts(read=docs.num_rows, kept=kept.num_rows,
                        dropped={"exact_duplicate": len(rows)} if rows else {})
        return write_shard(out_uri, task.name, [task.name], kept, rejected, empty_quarantine(), counts,
                           {"exact_dedup": counts}, shard_cfg.row_group_rows, shard_cfg.compression, key=task.key)

    result = run_shard_stage(ident, out_uri, tasks, make_shard, executor,
                             {"docs": versions.pinned(in_root, in_version)}, started, key_of=key_of)
    storage.delete(storage.join(out_uri, "_work"))  # the work directory is locked: no other run uses it
    return result
