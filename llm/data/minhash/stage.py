"""MinHash near-duplicate removal as a global stage: map, shuffles and a per-shard filter on the executor.

1. signatures (per input shard): shingles -> MinHash -> band hashes, written to band-hash-range
   buckets; URL hashes to URL buckets; shingle sets kept for exact verification.
2. buckets (per bucket): band collisions -> (better, worse) candidate pairs, sent to the better one's
   shard; URL groups: every copy after the best is a `url_duplicate`.
3. send, verify (per shard): see `verify`; exact or estimated Jaccard against the threshold.
4. clusters: one task when the verified graph fits the memory budget; otherwise components by rounds
   over graph partitions (`components`) and the greedy star rule per component bucket. Either way no
   document is removed by chaining (`clusters`).
5. ids (per shard): each shard looks up the ids of its keepers and cluster labels that other shards'
   removed documents refer to, and sends them there.
6. filter (per shard): kept documents go on; removed ones go to `rejected/` with cluster and keeper.

The driver only plans and collects small per-task summaries. Every task's memory is bounded by one
shard, one bucket or one partition, and the number of buckets grows with the corpus so a bucket stays
within `memory_mb`. No task reads another shard's files: what crosses shards goes through shuffles
whose size follows the pairs, so reading stays linear in the corpus.
"""

from __future__ import annotations

import hashlib
import json
import math
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llm import storage, versions
from llm.config import MinHashConfig, ShardConfig
from llm.data.dataset import (Counts, ShardRecord, ShardTask, dumps, read_manifest, run_shard_stage, shard_identity,
                              write_shard, writer_config)
from llm.data.minhash import index as mh_index
from llm.data.minhash import partitions
from llm.data.minhash.clusters import connected_components, greedy_stars
from llm.data.minhash.components import labels_of_partition, run_components
from llm.data.minhash.lsh import bucket_of, candidate_pairs, s_curve
from llm.data.minhash.plan import (BANDS, EDGES, ID_REQUESTS, IDS, REMOVED, URLS, Plan, bands_and_rows,
                                   keeper_priority, lookup)
from llm.data.minhash.shingles import ShingleBatch, shingle
from llm.data.minhash.signatures import MinHasher, band_hashes
from llm.data.minhash.urls import url_hashes
from llm.data.minhash.verify import send_index_task, send_task, verify_task
from llm.data.steps import empty_quarantine, rejected_rows
from llm.lineage import Identity, identity, of_input

STAGE = "minhash_dedup"
# Bytes per (document, band) entry in a bucket task, sort temporaries included.
_BAND_ENTRY_BYTES = 8 * 4 * 3
# Bytes per verified edge when the whole graph is clustered in one task: the edge arrays, both
# directions of the component records and their sort temporaries, the label dictionary.
_EDGE_BYTES = 512

# Bytes of work per byte of UTF-8 text while a batch is shingled: code points (allocated for two per
# byte), worst-case token arrays (hash, start, length per code point), n-gram hashes with their owners,
# and the sort.
_BYTES_PER_TEXT_BYTE = 8 + 2 * 3 * 8 + 2 * 8 + 8


def _shingles_of(texts: pa.ChunkedArray, cfg: MinHashConfig, hasher: MinHasher) -> tuple[ShingleBatch, np.ndarray]:
    """Shingles and signatures of one shard, in batches whose arrays stay within the memory budget."""
    texts = texts.combine_chunks()
    budget = max(1, (cfg.memory_mb << 20) // _BYTES_PER_TEXT_BYTE)
    ends = np.cumsum(pc.binary_length(texts).to_numpy(zero_copy_only=False).astype(np.int64))
    parts, sigs, start = [], [], 0
    while start < len(texts):
        done = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, done + budget, side="right")))
        batch = shingle(texts.slice(start, stop - start), cfg.shingle, cfg.ngram)
        parts.append(batch)
        sigs.append(hasher.signatures(batch))
        start = stop
    hashes = np.concatenate([p.hashes for p in parts]) if parts else np.zeros(0, np.uint64)
    counts = np.concatenate([p.counts for p in parts]) if parts else np.zeros(0, np.int64)
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    sig = np.concatenate(sigs) if sigs else np.zeros((0, hasher.num_perm), np.uint64)
    return ShingleBatch(hashes, offsets), sig


def _signature_task(plan: Plan, s: int) -> int:
    cfg, name = plan.cfg, plan.names[s]
    marker = storage.join(plan.folder("signed"), f"{name}.json")
    if storage.exists(marker):  # resumed run: this shard's map outputs are complete
        return json.loads(storage.read_text(marker))["docs"]
    docs = storage.read_parquet(plan.shard_uri(s))
    n = docs.num_rows
    doc = plan.bases[s] + np.arange(n, dtype=np.int64)
    prio = keeper_priority(docs, cfg)
    hasher = MinHasher(plan.bands * plan.rows, cfg.seed)
    batch, sig = _shingles_of(docs.column("text"), cfg, hasher)
    has = batch.counts > 0  # a document with no shingles has no signature to match
    bh = band_hashes(sig, plan.bands, plan.rows)
    rows_, bands_ = np.nonzero(np.broadcast_to(has[:, None], bh.shape))
    h = bh[rows_, bands_]
    partitions.write_partitioned(plan.folder("bands"), name, bucket_of(h, plan.partitions), plan.partitions,
                                 band=bands_.astype(np.int32), hash=h, doc=doc[rows_], prio=prio[rows_])
    if cfg.url_dedup and "url" in docs.column_names:
        uh, ok = url_hashes(docs.column("url").to_pylist())
        partitions.write_partitioned(plan.folder("urls"), name, bucket_of(uh[ok], plan.partitions),
                                     plan.partitions, hash=uh[ok], doc=doc[ok], prio=prio[ok])
    # The band hashes go to the index; the whole signatures only to estimated verification, the shingle
    # sets only to exact verification (each read again by that step alone).
    signatures = {"sig": sig} if cfg.verify == "estimate" else {}
    partitions.put(plan.file("sig", s), bands=bh, has=has, **signatures)
    if cfg.verify == "exact":
        partitions.put(plan.file("shingles", s), shingles=batch.hashes, offsets=batch.offsets)
    # Scratch like the files it vouches for: a marker that outlived them would help nobody.
    storage.write_bytes(marker, dumps({"docs": n}).encode(), durable=False)
    return n


def _candidates(plan: Plan, p: int, index) -> int:
    """Band collisions of bucket p as (better, worse) pairs, sent to the better one's shard (or, for an
    earlier run's document, to its index file)."""
    rec = partitions.read_partition(plan.folder("bands"), p, BANDS)
    if index is not None:  # earlier documents: always keepers (priority -inf), never removed
        old = partitions.read_partition(index.band_folder, p, BANDS)
        rec = {k: np.concatenate([rec[k], old[k]]) for k in BANDS}
    a, b = candidate_pairs(rec["band"], rec["hash"], rec["doc"], rec["prio"], plan.cfg.star_width)
    keep = b >= 0  # two index documents were settled by the earlier run
    a, b = a[keep], b[keep]
    prio_a = lookup(rec["doc"], rec["prio"], a)
    old = a < 0
    partitions.write_partitioned(plan.folder("pairs"), f"{p:05d}", plan.shard_of(a[~old]), len(plan.names),
                                 a=a[~old], b=b[~old], pa=prio_a[~old])
    if old.any():
        files = index.locate(a[old])[0]
        partitions.write_partitioned(plan.folder("index_pairs"), f"{p:05d}", files, len(index.files),
                                     a=a[old], b=b[old], pa=prio_a[old])
    return len(a)


def _url_duplicates(plan: Plan, p: int) -> int:
    """Every document whose normalized URL repeats goes, except the best-ranked copy."""
    rec = partitions.read_partition(plan.folder("urls"), p, URLS)
    order = np.lexsort((rec["doc"], rec["prio"], rec["hash"]))
    h, doc = rec["hash"][order], rec["doc"][order]
    first = np.r_[True, h[1:] != h[:-1]] if len(h) else np.zeros(0, bool)
    keeper = doc[np.maximum.accumulate(np.where(first, np.arange(len(h)), 0))] if len(h) else doc
    dup = ~first
    doc, keeper = doc[dup], keeper[dup]
    partitions.write_partitioned(plan.folder("url_removed"), f"{p:05d}", plan.shard_of(doc), len(plan.names),
                                 doc=doc, keeper=keeper)
    _write_removed(plan, f"url{p:05d}", doc, keeper, np.full(len(doc), np.nan), keeper, url=True)
    return len(doc)


def _bucket_task(plan: Plan, p: int, index) -> tuple[int, int]:
    """Both per-bucket steps in one task: URL duplicates, then band collisions."""
    urls = _url_duplicates(plan, p) if plan.cfg.url_dedup else 0
    return urls, _candidates(plan, p, index)


def _write_removed(plan: Plan, producer: str, doc: np.ndarray, keeper: np.ndarray, j: np.ndarray,
                   label: np.ndarray, url: bool = False) -> None:
    """Removal records, to the removed document's shard; and requests for the ids of the keepers and
    labels they name, to the shard holding each (index documents: one extra partition)."""
    shards = len(plan.names)
    partitions.write_partitioned(plan.folder("removed"), producer, plan.shard_of(doc), shards, doc=doc,
                                 keeper=keeper, j=j, label=label, url=np.full(len(doc), url))
    node = np.concatenate([keeper, label])
    home = plan.shard_of(node)
    partitions.write_partitioned(plan.folder("id_requests"), producer, np.where(home < 0, shards, home), shards + 1,
                                 node=node, to=np.tile(plan.shard_of(doc), 2))


def _records_task(plan: Plan, p: int) -> None:
    """The first round's records of the components rounds: both directions of partition p's edges."""
    e = partitions.read_partition(plan.folder("edges"), p, EDGES)
    u, v = np.concatenate([e["a"], e["b"]]), np.concatenate([e["b"], e["a"]])
    partitions.write_partitioned(storage.join(plan.folder("cc"), "r000"), f"{p:05d}", u, plan.partitions, u=u, v=v)


def _label_task(plan: Plan, stars: str, p: int) -> None:
    """Attach the component label to each edge whose better end is in partition p; route by label."""
    nodes, labels = labels_of_partition(stars, p)
    e = partitions.read_partition(plan.folder("edges"), p, EDGES)
    label = labels[np.searchsorted(nodes, e["a"])] if len(e["a"]) else e["a"]
    partitions.write_partitioned(plan.folder("labelled"), f"{p:05d}", label, plan.partitions, label=label, **e)


def _star_task(plan: Plan, p: int) -> list[int]:
    """Greedy stars over whole components; returns the cluster sizes (keeper + removed)."""
    e = partitions.read_partition(plan.folder("labelled"), p, {"label": "int64", **EDGES})
    chosen = greedy_stars(e["a"], e["b"], e["pa"])
    keeper = e["a"][chosen]
    _write_removed(plan, f"{p:05d}", e["b"][chosen], keeper, e["j"][chosen], e["label"][chosen])
    return np.unique(keeper, return_counts=True)[1].tolist()


def _cluster_all_task(plan: Plan) -> list[int]:
    """The whole verified graph in one task (it fits the budget): components and greedy stars in memory,
    the same clusters, keepers and labels as the distributed rounds. Returns the cluster sizes."""
    parts = [partitions.read_partition(plan.folder("edges"), p, EDGES) for p in range(plan.partitions)]
    e = {k: np.concatenate([part[k] for part in parts]) for k in EDGES}
    label_of = connected_components(e["a"], e["b"])
    chosen = greedy_stars(e["a"], e["b"], e["pa"])
    keeper = e["a"][chosen]
    label = np.array([label_of[x] for x in keeper.tolist()], dtype=np.int64)
    _write_removed(plan, "all", e["b"][chosen], keeper, e["j"][chosen], label)
    return np.unique(keeper, return_counts=True)[1].tolist()


def _ids_task(plan: Plan, t: int, index: "mh_index.Index | None") -> None:
    """Answer the id requests addressed to shard t (t = number of shards: the index) from its id column."""
    rec = partitions.read_partition(plan.folder("id_requests"), t, ID_REQUESTS)
    if not len(rec["node"]):
        return
    key = np.unique(np.stack([rec["to"], rec["node"]]), axis=1)
    to, node = key[0], key[1]
    if t == len(plan.names):
        ids = index.ids(node)
    else:
        column = storage.read_parquet(plan.shard_uri(t), columns=["id"]).column("id")
        ids = column.take(pa.array(node - plan.bases[t])).to_pylist()
    partitions.write_partitioned(plan.folder("ids"), f"{t:05d}", to, len(plan.names), node=node,
                                 id=np.array(ids, dtype=str))


def _decisions(plan: Plan, s: int) -> tuple[dict, dict]:
    """The removal records addressed to shard s (sorted by document) and the ids they name."""
    cfg = plan.cfg
    removed = partitions.read_partition(plan.folder("removed"), s, REMOVED) if cfg.enabled else \
        {k: np.zeros(0, dt) for k, dt in REMOVED.items()}
    order = np.argsort(removed["doc"], kind="stable")
    removed = {k: removed[k][order] for k in ("doc", "keeper", "j", "label", "url")}
    answers = partitions.read_partition(plan.folder("ids"), s, IDS) if cfg.enabled else {"node": [], "id": []}
    ids = dict(zip(np.asarray(answers["node"]).tolist(), np.asarray(answers["id"]).tolist()))
    return removed, ids


def _decision_digest(plan: Plan, s: int) -> list:
    """What shard s's output depends on beyond its own rows: which rows go, why, and to which keeper
    and cluster (by id, since global numbers shift when shards before it change)."""
    removed, ids = _decisions(plan, s)
    return [[int(d - plan.bases[s]), ids[int(k)], ids[int(c)], None if math.isnan(j) else round(float(j), 6), bool(u)]
            for d, k, c, j, u in zip(removed["doc"], removed["keeper"], removed["label"], removed["j"],
                                     removed["url"])]


def _filter_shard(plan: Plan, s: int, shard_cfg: ShardConfig, key: str) -> ShardRecord:
    cfg, name = plan.cfg, plan.names[s]
    docs = storage.read_parquet(plan.shard_uri(s))
    removed, ids = _decisions(plan, s)
    doc, keeper, j, label, is_url = (removed[k] for k in ("doc", "keeper", "j", "label", "url"))
    rows = doc - plan.bases[s]
    gone = np.zeros(docs.num_rows, bool)
    gone[rows] = True
    kept, dups = docs.filter(pa.array(~gone)), docs.take(pa.array(rows))
    rules = ["url_duplicate" if u else "near_duplicate" for u in is_url.tolist()]
    details = [json.dumps({"cluster": ids[c], "keeper": ids[k]}, sort_keys=True)
               for c, k in zip(label.tolist(), keeper.tolist())]
    thresholds = [None if u else cfg.threshold for u in is_url.tolist()]
    values = [None if math.isnan(x) else round(float(x), 6) for x in j.tolist()]
    rejected = rejected_rows(dups, STAGE, rules, values, thresholds, details)
    dropped = {r: rules.count(r) for r in sorted(set(rules))}
    counts = Counts(read=docs.num_rows, kept=kept.num_rows, dropped=dropped)
    files, extra = {}, {}
    if cfg.enabled:
        files["index"], extra["index_docs"] = mh_index.write_shard_index(plan, s, gone, docs.column("id").to_pylist(),
                                                                         key)
    rec = write_shard(plan.out_uri, name, [name], kept, rejected, empty_quarantine(), counts, {STAGE: counts},
                      shard_cfg.row_group_rows, shard_cfg.compression, extra=extra, key=key)
    rec.files.update(files)
    return rec


def minhash_identity(manifest: dict, cfg: MinHashConfig, shard_cfg: ShardConfig) -> Identity:
    """The stage's identity: its code and config, its input's version and, for a refresh against an
    earlier run's index, that index's state."""
    version, recipe = of_input(manifest)
    inputs = {"docs": version}
    if cfg.enabled and cfg.index_uri:
        meta = storage.join(cfg.index_uri, mh_index.INDEX, mh_index.META)
        inputs["index"] = hashlib.sha256(storage.read_bytes(meta)).hexdigest()[:16] if storage.exists(meta) else "none"
    return identity(STAGE, {"minhash": cfg.model_dump(mode="json"), "writer": writer_config(shard_cfg)},
                    inputs, {"docs": recipe})


def run_minhash_dedup(in_uri: str, out_uri: str, cfg: MinHashConfig, shard_cfg: ShardConfig, executor) -> dict:
    """Remove near-duplicates from the dataset at `in_uri` into a new version of `out_uri`; returns its
    manifest, whose `minhash` entry holds the run's statistics (S-curve, candidates, cluster sizes). An
    output shard is reused when its input and every decision about its rows match an earlier version."""
    started = time.time()
    if hasattr(executor, "start"):  # worker processes come up while the driver plans
        executor.start()
    in_root = versions.split(in_uri)[0]
    manifest = read_manifest(in_uri)
    ident = minhash_identity(manifest, cfg, shard_cfg)
    reused = versions.reuse(out_uri, ident)
    if reused is not None:
        return reused
    shards = manifest["shards"]
    rows = [s["rows"] for s in shards]
    bands, rows_per_band = bands_and_rows(cfg)
    total = int(sum(rows))
    n_parts = max(cfg.min_buckets, math.ceil(total * bands * _BAND_ENTRY_BYTES / (cfg.memory_mb << 20)))
    plan = Plan(in_root, out_uri, storage.join(out_uri, "_work", ident.version), cfg, bands, rows_per_band,
                n_parts, tuple(s["name"] for s in shards), tuple(s["files"]["data"] for s in shards),
                tuple(int(x) for x in np.r_[0, np.cumsum(rows)[:-1]]) if rows else ())
    input_keys = [shard_identity(s) for s in shards]
    tasks = [ShardTask(name, (name,), i) for i, name in enumerate(plan.names)]
    index = mh_index.Index.open(cfg.index_uri, plan) if cfg.enabled and cfg.index_uri else None
    stats: dict = {"bands": bands, "rows": rows_per_band, "partitions": n_parts,
                   "s_curve": {f"{s:g}": p for s, p in s_curve(bands, rows_per_band).items()}}
    if cfg.enabled:
        _find_duplicates(plan, index, executor, stats)

    def key_of(task: ShardTask) -> str:
        return ident.shard_key(input=input_keys[task.payload], decisions=_decision_digest(plan, task.payload))

    def publish_index(result: dict) -> dict:
        if cfg.enabled:
            result["files"] = {"index_meta": mh_index.write_meta(plan, ident.version, result),
                               "index_pointer": f"{mh_index.INDEX}/{mh_index.META}"}
        return result

    result = run_shard_stage(ident, out_uri, tasks, lambda t: _filter_shard(plan, t.payload, shard_cfg, t.key),
                             executor, {"docs": versions.pinned(in_root, manifest["version"])}, started,
                             extra={"minhash": stats}, key_of=key_of, extend=publish_index)
    storage.delete(storage.join(out_uri, "_work"))
    return result


def _find_duplicates(plan: Plan, index, executor, stats: dict) -> None:
    """Every global phase up to the per-shard removal records and id answers; fills `stats`."""
    cfg, n_parts = plan.cfg, plan.partitions
    shard_ids, part_ids = list(range(len(plan.names))), list(range(n_parts))
    executor.map(lambda s: _signature_task(plan, s), shard_ids, desc="minhash: signatures")
    if index:
        index.partition(executor)
    found = executor.map(lambda p: _bucket_task(plan, p, index), part_ids, desc="minhash: buckets")
    if cfg.url_dedup:
        stats["url_duplicates"] = sum(f[0] for f in found)
    senders = [(True, t) for t in shard_ids] + [(False, f) for f in range(len(index.files) if index else 0)]
    sent = executor.map(lambda x: send_task(plan, x[1]) if x[0] else send_index_task(plan, x[1], index),
                        senders, desc="minhash: send")
    verified = executor.map(lambda s: verify_task(plan, s), shard_ids, desc="minhash: verify")
    stats["candidate_pairs"] = sum(sent)
    stats["verified_pairs"] = sum(v[0] for v in verified)
    stats["candidate_jaccard_hist"] = np.sum([v[1] for v in verified], axis=0).tolist() if verified else []
    if stats["verified_pairs"] * _EDGE_BYTES <= cfg.memory_mb << 20:
        sizes = executor.map(lambda _: _cluster_all_task(plan), [0], desc="minhash: clusters")[0]
    else:  # rounds over graph partitions, each task bounded by its partition
        executor.map(lambda p: _records_task(plan, p), part_ids, desc="minhash: graph records")
        stars = run_components(plan.folder("cc"), n_parts, executor)
        executor.map(lambda p: _label_task(plan, stars, p), part_ids, desc="minhash: labels")
        sizes = [x for part in executor.map(lambda p: _star_task(plan, p), part_ids, desc="minhash: stars")
                 for x in part]
    stats["cluster_size_hist"] = cluster_size_histogram(sizes)
    executor.map(lambda t: _ids_task(plan, t, index), shard_ids + [len(plan.names)], desc="minhash: ids")


def removal_rate(manifest: dict) -> float:
    """Share of read documents the stage removed (URL and near duplicates)."""
    counts = manifest["totals"]["counts"]
    return sum(counts["dropped"].values()) / counts["read"] if counts["read"] else 0.0


def cluster_size_histogram(sizes: list[int]) -> dict[str, int]:
    """Clusters (keeper + removed) by size, in powers-of-two bins: {"2": n, "3-4": n, "5-8": n, ...}."""
    out: dict[str, int] = {}
    for size in sorted(sizes):
        hi = 1 << max(1, math.ceil(math.log2(size)))
        lo = hi // 2 + 1
        key = str(hi) if lo == hi else f"{lo}-{hi}"
        out[key] = out.get(key, 0) + 1
    return out
