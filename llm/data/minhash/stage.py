"""MinHash near-duplicate removal as a global stage: map, shuffles and a per-shard filter on the executor.

1. signatures (per input shard): shingles -> MinHash -> band hashes, written to band-hash-range
   buckets; URL hashes to URL buckets; shingle sets kept for exact verification.
2. candidates (per bucket): band collisions -> (better, worse) pairs, sent to the better one's shard.
   URL groups (per URL bucket): every copy after the best is a `url_duplicate`.
3. verify (per shard): exact or estimated Jaccard of each pair against the threshold.
4. components (per graph partition, a few rounds): see `components`.
5. stars (per component bucket): the greedy star rule, so nothing is removed by chaining.
6. filter (per shard): kept documents go on; removed ones go to `rejected/` with cluster and keeper.

Documents are numbered globally by (input shard order, row); the driver only plans and collects small
per-task summaries. Every task's memory is bounded by one shard, one bucket or one partition, and the
number of buckets grows with the corpus so a bucket stays within `memory_mb`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llm import storage
from llm.config import MinHashConfig, ShardConfig
from llm.data.dataset import Counts, ShardRecord, ShardTask, dumps, is_done, read_manifest, run_shard_stage
from llm.data.ingest import write_shard
from llm.data.minhash import index as mh_index
from llm.data.minhash import kernels
from llm.data.minhash import partitions
from llm.data.minhash.clusters import connected_components, greedy_stars
from llm.data.minhash.components import labels_of_partition, run_components
from llm.data.minhash.lsh import bucket_of, candidate_pairs, s_curve, unique_pairs
from llm.data.minhash.shingles import ShingleBatch, shingle
from llm.data.minhash.signatures import MinHasher, band_hashes, estimated_jaccard
from llm.data.minhash.urls import url_hashes
from llm.data.steps import empty_quarantine, rejected_rows

STAGE = "minhash_dedup"
# Bytes per (document, band) entry in a bucket task, sort temporaries included.
_BAND_ENTRY_BYTES = 8 * 4 * 3
# Bytes per verified edge when the whole graph is clustered in one task: the edge arrays, both
# directions of the component records and their sort temporaries, the label dictionary.
_EDGE_BYTES = 512
_BANDS = {"band": "int32", "hash": "uint64", "doc": "int64", "prio": "float64"}
_PAIRS = {"a": "int64", "b": "int64", "pa": "float64", "pb": "float64"}
_EDGES = {"a": "int64", "b": "int64", "pa": "float64", "j": "float64"}
_REMOVED = {"doc": "int64", "keeper": "int64", "j": "float64", "label": "int64", "url": "bool"}
_URLS = {"hash": "uint64", "doc": "int64", "prio": "float64"}


@dataclass(frozen=True)
class Plan:
    """Everything a task needs to know about the run (picklable, small)."""

    in_uri: str
    out_uri: str
    work: str
    cfg: MinHashConfig
    bands: int
    rows: int
    partitions: int
    names: tuple[str, ...]
    data_rels: tuple[str, ...]
    bases: tuple[int, ...]  # global index of each shard's first row

    def shard_of(self, docs: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.asarray(self.bases), docs, side="right") - 1

    def folder(self, name: str) -> str:
        return storage.join(self.work, name)


def bands_and_rows(cfg: MinHashConfig) -> tuple[int, int]:
    if cfg.auto_bands:
        from llm.data.minhash.lsh import choose_bands

        return choose_bands(cfg.threshold, cfg.num_perm, cfg.fp_weight, cfg.fn_weight)
    return cfg.bands, cfg.rows


def keeper_priority(docs: pa.Table, cfg: MinHashConfig) -> np.ndarray:
    """Smaller is kept first; ties go to input order. Missing values rank last."""
    n = docs.num_rows
    if cfg.keeper == "first":
        return np.zeros(n)
    if cfg.keeper == "longest":
        return -pc.utf8_length(docs.column("text")).to_numpy(zero_copy_only=False).astype(np.float64)
    if cfg.keeper == "quality":
        if cfg.quality_column not in docs.column_names:
            raise ValueError(f"data.minhash.keeper is 'quality' but documents have no column "
                             f"{cfg.quality_column!r} (set data.minhash.quality_column)")
        values = pc.cast(docs.column(cfg.quality_column), pa.float64()).to_numpy(zero_copy_only=False)
        return np.where(np.isnan(values), np.inf, -values)
    out = np.full(n, np.inf)
    for i, created in enumerate(docs.column("created").to_pylist()):
        try:
            out[i] = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp() if created else np.inf
        except ValueError:
            pass  # unparseable dates rank with missing ones
    return out


# Bytes per character of text while a batch is shingled: its code point, worst-case token arrays
# (hash, start, length), n-gram hashes with their owners, and the sort.
_BYTES_PER_CHAR = 4 + 3 * 8 + 2 * 8 + 8


def _shingles_of(texts: list[str], cfg: MinHashConfig, hasher: MinHasher) -> tuple[ShingleBatch, np.ndarray]:
    """Shingles and signatures of one shard, in batches whose arrays stay within the memory budget."""
    budget_chars = max(1, (cfg.memory_mb << 20) // _BYTES_PER_CHAR)
    parts, sigs, start = [], [], 0
    while start < len(texts):
        stop, chars = start, 0
        while stop < len(texts) and (stop == start or chars + len(texts[stop]) < budget_chars):
            chars += len(texts[stop])
            stop += 1
        batch = shingle(texts[start:stop], cfg.shingle, cfg.ngram)
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
    docs = storage.read_parquet(storage.join(plan.in_uri, plan.data_rels[s]))
    n = docs.num_rows
    doc = plan.bases[s] + np.arange(n, dtype=np.int64)
    prio = keeper_priority(docs, cfg)
    hasher = MinHasher(plan.bands * plan.rows, cfg.seed)
    batch, sig = _shingles_of(docs.column("text").to_pylist(), cfg, hasher)
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
    partitions.save(storage.join(plan.folder("sig"), f"{name}.npz"), sig=sig, bands=bh, has=has)
    if cfg.verify == "exact":  # read again only by verification, so kept apart from the signatures
        partitions.save(storage.join(plan.folder("shingles"), f"{name}.npz"), shingles=batch.hashes,
                        offsets=batch.offsets)
    storage.write_text(marker, dumps({"docs": n}))
    return n


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    order = np.argsort(keys, kind="stable")
    return values[order][np.searchsorted(keys[order], query)]


def _candidate_task(plan: Plan, p: int, index_folders: list[str]) -> int:
    rec = partitions.read_partition(plan.folder("bands"), p, _BANDS)
    for folder in index_folders:  # earlier documents: always keepers (priority -inf), never removed
        old = partitions.read_partition(folder, p, _BANDS)
        rec = {k: np.concatenate([rec[k], old[k]]) for k in _BANDS}
    a, b = candidate_pairs(rec["band"], rec["hash"], rec["doc"], rec["prio"], plan.cfg.star_width)
    keep = b >= 0  # two index documents were settled by the earlier run
    a, b = a[keep], b[keep]
    pa_, pb_ = _lookup(rec["doc"], rec["prio"], a), _lookup(rec["doc"], rec["prio"], b)
    partitions.write_partitioned(plan.folder("pairs"), f"{p:05d}", np.maximum(plan.shard_of(b), 0),
                                 len(plan.names), a=a, b=b, pa=pa_, pb=pb_)
    return len(a)


def _url_task(plan: Plan, p: int) -> int:
    """Every document whose normalized URL repeats goes, except the best-ranked copy."""
    rec = partitions.read_partition(plan.folder("urls"), p, _URLS)
    order = np.lexsort((rec["doc"], rec["prio"], rec["hash"]))
    h, doc = rec["hash"][order], rec["doc"][order]
    first = np.r_[True, h[1:] != h[:-1]] if len(h) else np.zeros(0, bool)
    keeper = doc[np.maximum.accumulate(np.where(first, np.arange(len(h)), 0))] if len(h) else doc
    dup = ~first
    partitions.write_partitioned(plan.folder("url_removed"), f"{p:05d}", plan.shard_of(doc[dup]), len(plan.names),
                                 doc=doc[dup], keeper=keeper[dup])
    return int(dup.sum())


def _url_removed(plan: Plan, s: int) -> dict[str, np.ndarray]:
    return partitions.read_partition(plan.folder("url_removed"), s, {"doc": "int64", "keeper": "int64"})


def _verify_task(plan: Plan, s: int, index: "mh_index.Index | None") -> tuple[int, int, list[int]]:
    """Pairs whose worse document lives in shard s: measure Jaccard, keep those at the threshold.
    Returns (candidates, verified, histogram of candidate Jaccard in 20 bins)."""
    cfg = plan.cfg
    rec = partitions.read_partition(plan.folder("pairs"), s, _PAIRS)
    a, b = unique_pairs(rec["a"], rec["b"])
    candidates = len(a)
    pa_ = _lookup(rec["a"], rec["pa"], a) if len(a) else np.zeros(0)
    url_gone = _url_removed(plan, s)["doc"]
    live = ~np.isin(b, url_gone)
    j = np.zeros(len(a))
    exact = cfg.verify == "exact"
    kind = "shingles" if exact else "sig"
    own = partitions.load(storage.join(plan.folder(kind), f"{plan.names[s]}.npz"))
    own_sig = own["sig"] if not exact else None
    rows_b = b - plan.bases[s]
    shard_a = plan.shard_of(a)
    for t in np.unique(shard_a).tolist():
        sel = np.flatnonzero(shard_a == t)
        if t < 0:  # the keeper candidate is an index document: its shingles are not kept, estimate
            if own_sig is None:
                own_sig = partitions.load(storage.join(plan.folder("sig"), f"{plan.names[s]}.npz"))["sig"]
            j[sel] = estimated_jaccard(index.signatures(a[sel]), own_sig[rows_b[sel]])
            continue
        other = own if t == s else partitions.load(storage.join(plan.folder(kind), f"{plan.names[t]}.npz"))
        live[sel] &= ~np.isin(a[sel], _url_removed(plan, t)["doc"]) if cfg.url_dedup else True
        rows_a = a[sel] - plan.bases[t]
        if exact:
            j[sel] = kernels.pair_jaccard(other["shingles"], other["offsets"], rows_a,
                                          own["shingles"], own["offsets"], rows_b[sel])
        else:
            j[sel] = estimated_jaccard(other["sig"][rows_a], own["sig"][rows_b[sel]])
        del other  # at most two shards' files at a time
    hist = np.histogram(j, bins=20, range=(0.0, 1.0))[0].tolist()
    keep = live & ((j >= cfg.threshold) if cfg.verify != "none" else True)
    a, b, pa_, j = a[keep], b[keep], pa_[keep], j[keep]
    partitions.write_partitioned(plan.folder("edges"), plan.names[s], a, plan.partitions, a=a, b=b, pa=pa_, j=j)
    u, v = np.concatenate([a, b]), np.concatenate([b, a])
    partitions.write_partitioned(storage.join(plan.folder("cc"), "r000"), plan.names[s], u, plan.partitions, u=u, v=v)
    return candidates, int(keep.sum()), hist


def _label_task(plan: Plan, stars: str, p: int) -> None:
    """Attach the component label to each edge whose better end is in partition p; route by label."""
    nodes, labels = labels_of_partition(stars, p)
    e = partitions.read_partition(plan.folder("edges"), p, _EDGES)
    label = labels[np.searchsorted(nodes, e["a"])] if len(e["a"]) else e["a"]
    partitions.write_partitioned(plan.folder("labelled"), f"{p:05d}", label, plan.partitions, label=label, **e)


def _cluster_all_task(plan: Plan) -> list[int]:
    """The whole verified graph in one task (it fits the budget): components and greedy stars in memory,
    the same clusters, keepers and labels as the distributed rounds. Returns the cluster sizes."""
    parts = [partitions.read_partition(plan.folder("edges"), p, _EDGES) for p in range(plan.partitions)]
    e = {k: np.concatenate([part[k] for part in parts]) for k in _EDGES}
    label_of = connected_components(e["a"], e["b"])
    label = np.array([label_of[x] for x in e["a"].tolist()], dtype=np.int64)
    chosen = greedy_stars(e["a"], e["b"], e["pa"])
    doc, keeper = e["b"][chosen], e["a"][chosen]
    partitions.write_partitioned(plan.folder("removed"), "all", plan.shard_of(doc), len(plan.names),
                                 doc=doc, keeper=keeper, j=e["j"][chosen], label=label[chosen],
                                 url=np.zeros(len(doc), bool))
    return np.unique(keeper, return_counts=True)[1].tolist()


def _star_task(plan: Plan, p: int) -> list[int]:
    """Greedy stars over whole components; returns the cluster sizes (keeper + removed)."""
    e = partitions.read_partition(plan.folder("labelled"), p, {"label": "int64", **_EDGES})
    chosen = greedy_stars(e["a"], e["b"], e["pa"])
    doc, keeper = e["b"][chosen], e["a"][chosen]
    partitions.write_partitioned(plan.folder("removed"), f"{p:05d}", plan.shard_of(doc), len(plan.names),
                                 doc=doc, keeper=keeper, j=e["j"][chosen], label=e["label"][chosen],
                                 url=np.zeros(len(doc), bool))
    return np.unique(keeper, return_counts=True)[1].tolist()


def _ids_of(plan: Plan, docs: np.ndarray, index: "mh_index.Index | None") -> dict[int, str]:
    """Document ids of global indices, reading only the id column of the shards they are in."""
    out: dict[int, str] = {}
    docs = np.unique(docs)
    shard = plan.shard_of(docs)
    for t in np.unique(shard).tolist():
        sel = docs[shard == t]
        if t < 0:
            out.update(zip(sel.tolist(), index.ids(sel)))
            continue
        ids = storage.read_parquet(storage.join(plan.in_uri, plan.data_rels[t]), columns=["id"]).column("id")
        out.update(zip(sel.tolist(), ids.take(pa.array(sel - plan.bases[t])).to_pylist()))
    return out


def _filter_shard(plan: Plan, s: int, index, shard_cfg: ShardConfig, task: ShardTask) -> ShardRecord:
    cfg, name = plan.cfg, plan.names[s]
    docs = storage.read_parquet(storage.join(plan.in_uri, plan.data_rels[s]))
    if cfg.enabled:
        near = partitions.read_partition(plan.folder("removed"), s, _REMOVED)
        url = _url_removed(plan, s)
        doc = np.concatenate([url["doc"], near["doc"]])
        keeper = np.concatenate([url["keeper"], near["keeper"]])
        j = np.concatenate([np.full(len(url["doc"]), np.nan), near["j"]])
        label = np.concatenate([url["keeper"], near["label"]])
        is_url = np.r_[np.ones(len(url["doc"]), bool), np.zeros(len(near["doc"]), bool)]
    else:
        doc = keeper = label = np.zeros(0, np.int64)
        j, is_url = np.zeros(0), np.zeros(0, bool)
    order = np.argsort(doc, kind="stable")
    doc, keeper, j, label, is_url = doc[order], keeper[order], j[order], label[order], is_url[order]
    rows = doc - plan.bases[s]
    gone = np.zeros(docs.num_rows, bool)
    gone[rows] = True
    kept, dups = docs.filter(pa.array(~gone)), docs.take(pa.array(rows))
    ids = _ids_of(plan, np.concatenate([keeper, label]), index)
    rules = ["url_duplicate" if u else "near_duplicate" for u in is_url.tolist()]
    details = [json.dumps({"cluster": ids[c], "keeper": ids[k]}, sort_keys=True)
               for c, k in zip(label.tolist(), keeper.tolist())]
    thresholds = [None if u else cfg.threshold for u in is_url.tolist()]
    values = [None if math.isnan(x) else round(float(x), 6) for x in j.tolist()]
    rejected = rejected_rows(dups, STAGE, rules, values, thresholds, details)
    dropped = {r: rules.count(r) for r in sorted(set(rules))}
    counts = Counts(read=docs.num_rows, kept=kept.num_rows, dropped=dropped)
    files = {}
    if cfg.enabled:
        files["index"] = mh_index.write_shard_index(plan, s, gone, docs.column("id").to_pylist())
    rec = write_shard(plan.out_uri, name, [name], kept, rejected, empty_quarantine(), counts, {STAGE: counts},
                      shard_cfg.row_group_rows, shard_cfg.compression)
    rec.files.update(files)
    return rec


def run_minhash_dedup(in_uri: str, out_uri: str, cfg: MinHashConfig, shard_cfg: ShardConfig,
                      config_hash: str, executor) -> dict:
    """Remove near-duplicates from the dataset at `in_uri` into `out_uri`; returns the output manifest,
    whose `minhash` entry holds the run's statistics (S-curve, candidates, cluster sizes)."""
    manifest = read_manifest(in_uri)
    shards = manifest["shards"]
    rows = [s["rows"] for s in shards]
    bands, rows_per_band = bands_and_rows(cfg)
    total = int(sum(rows))
    n_parts = max(cfg.min_buckets, math.ceil(total * bands * _BAND_ENTRY_BYTES / (cfg.memory_mb << 20)))
    plan = Plan(in_uri, out_uri, storage.join(out_uri, "_work", config_hash), cfg, bands, rows_per_band, n_parts,
                tuple(s["name"] for s in shards), tuple(s["files"]["data"] for s in shards),
                tuple(int(x) for x in np.r_[0, np.cumsum(rows)[:-1]]) if rows else ())
    tasks = [ShardTask(name, (name,), i) for i, name in enumerate(plan.names)]
    index = mh_index.Index.open(cfg.index_uri, plan) if cfg.enabled and cfg.index_uri else None
    stats: dict = {"bands": bands, "rows": rows_per_band, "partitions": n_parts,
                   "s_curve": {f"{s:g}": p for s, p in s_curve(bands, rows_per_band).items()}}
    if cfg.enabled and not all(is_done(out_uri, t.name, config_hash) for t in tasks):
        shard_ids, part_ids = list(range(len(plan.names))), list(range(n_parts))
        executor.map(lambda s: _signature_task(plan, s), shard_ids, desc="minhash: signatures")
        index_folders = index.partition(executor) if index else []
        if cfg.url_dedup:
            stats["url_duplicates"] = sum(executor.map(lambda p: _url_task(plan, p), part_ids, desc="minhash: urls"))
        executor.map(lambda p: _candidate_task(plan, p, index_folders), part_ids, desc="minhash: candidates")
        verified = executor.map(lambda s: _verify_task(plan, s, index), shard_ids, desc="minhash: verify")
        stats["candidate_pairs"] = sum(v[0] for v in verified)
        stats["verified_pairs"] = sum(v[1] for v in verified)
        stats["candidate_jaccard_hist"] = np.sum([v[2] for v in verified], axis=0).tolist() if verified else []
        if stats["verified_pairs"] * _EDGE_BYTES <= cfg.memory_mb << 20:
            sizes = executor.map(lambda _: _cluster_all_task(plan), [0], desc="minhash: clusters")[0]
        else:  # rounds over graph partitions, each task bounded by its partition
            stars = run_components(plan.folder("cc"), n_parts, executor)
            executor.map(lambda p: _label_task(plan, stars, p), part_ids, desc="minhash: labels")
            sizes = [x for part in executor.map(lambda p: _star_task(plan, p), part_ids, desc="minhash: stars")
                     for x in part]
        stats["cluster_size_hist"] = cluster_size_histogram(sizes)
    elif cfg.enabled:
        stats = _previous_stats(out_uri, config_hash) or stats  # nothing recomputed: keep what was measured
    result = run_shard_stage(STAGE, out_uri, tasks, lambda t: _filter_shard(plan, t.payload, index, shard_cfg, t),
                             config_hash, executor, [in_uri], extra={"minhash": stats})
    if cfg.enabled:
        mh_index.write_meta(plan, config_hash)
    storage.delete(storage.join(out_uri, "_work"))
    return result


def _previous_stats(out_uri: str, config_hash: str) -> dict | None:
    try:
        manifest = read_manifest(out_uri)
    except FileNotFoundError:
        return None
    return manifest.get("minhash") if manifest.get("config_hash") == config_hash else None


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
