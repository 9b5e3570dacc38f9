"""Verification of candidate pairs, each shard reading only its own files.

A candidate pair (a, b) joins a better document a and a worse one b, often in different shards. If
b's task read a's shard to compare them, every task would read most shards (quadratic reading as the
corpus grows). Instead the pairs go to a's shard first:

1. send (per shard t, the shard of a): its pairs, minus documents already removed by URL, and the
   shingle sets (exact) or signatures (estimate) of its a's, each sent once to each shard that needs
   it. What moves is proportional to the pairs, not to the shards.
2. verify (per shard s, the shard of b): its own sets against what it received; exact or estimated
   Jaccard against the threshold; the verified edges go on to clustering.

Pairs whose a is a document of an earlier run's index (incremental runs) are sent by the index file
that holds it: its text re-shingled from the earlier output, as shingle sets (exact) or signatures
made again (estimate).
"""

from __future__ import annotations

import numpy as np
from pyarrow import array as pa_array

from llm import storage
from llm.data.minhash import kernels, partitions
from llm.data.minhash.lsh import unique_pairs
from llm.data.minhash.plan import PAIRS, Plan, lookup, url_removed
from llm.data.minhash.shingles import shingle
from llm.data.minhash.signatures import MinHasher, estimated_jaccard


def gather_sets(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The concatenated sets `values[offsets[r]:offsets[r + 1]]` of each row r, with their offsets."""
    counts = offsets[rows + 1] - offsets[rows]
    out = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    index = np.repeat(offsets[rows] - out[:-1], counts) + np.arange(out[-1], dtype=np.int64)
    return values[index], out


def _payload(plan: Plan, s: int) -> dict[str, np.ndarray]:
    exact = plan.cfg.verify == "exact"
    return partitions.get(plan.file("shingles" if exact else "sig", s))


def _send(plan: Plan, producer: str, a: np.ndarray, b: np.ndarray, pa: np.ndarray, own: dict,
          row_of) -> None:
    """Pairs to the worse document's shard, each better document's set (rows of `own`) once per shard."""
    dest = plan.shard_of(b)
    for u in np.unique(dest).tolist():
        sel = dest == u
        senders, ref = np.unique(a[sel], return_inverse=True)
        rows = row_of(senders)
        if "shingles" in own:
            values, offsets = gather_sets(own["shingles"], own["offsets"], rows)
            payload = {"shingles": values, "offsets": offsets}
        else:
            payload = {"sig": own["sig"][rows]}
        to = storage.join(partitions.part_dir(plan.folder("sent"), u), f"{producer}{partitions.SUFFIX}")
        partitions.put(to, a=a[sel], b=b[sel], pa=pa[sel], ref=ref.astype(np.int64), **payload)


def _pairs(folder: str, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rec = partitions.read_partition(folder, p, PAIRS)
    a, b = unique_pairs(rec["a"], rec["b"])
    return a, b, lookup(rec["a"], rec["pa"], a) if len(a) else np.zeros(0)


def send_task(plan: Plan, t: int) -> int:
    """Send the pairs whose better document is in shard t, with that document's set, to the shard of
    the worse one. Returns the number of distinct candidate pairs."""
    a, b, pa = _pairs(plan.folder("pairs"), t)
    candidates = len(a)
    if plan.cfg.url_dedup:
        live = ~np.isin(a, url_removed(plan, t)["doc"])
        a, b, pa = a[live], b[live], pa[live]
    if len(a):
        _send(plan, plan.names[t], a, b, pa, _payload(plan, t), lambda docs: docs - plan.bases[t])
    return candidates


def send_index_task(plan: Plan, f: int, index) -> int:
    """The same for pairs whose better document is in index file f of an earlier run: its shingle sets
    or signatures, made again from its text in that run's output (only the documents paired here)."""
    a, b, pa = _pairs(plan.folder("index_pairs"), f)
    if not len(a):
        return 0
    senders = np.unique(a)
    stored = partitions.load(index.files[f])
    rows = index.locate(senders)[1]
    texts = storage.read_parquet(index.data[f], columns=["text"]).column("text")
    batch = shingle(texts.take(pa_array(stored["row"][rows])), plan.cfg.shingle, plan.cfg.ngram)
    if plan.cfg.verify == "exact":
        own = {"shingles": batch.hashes, "offsets": batch.offsets}
    else:  # the index keeps band hashes only: the few signatures needed are made again
        own = {"sig": MinHasher(plan.bands * plan.rows, plan.cfg.seed).signatures(batch)}
    _send(plan, f"index-{f:05d}", a, b, pa, own, lambda docs: np.searchsorted(senders, docs))
    return len(a)


def verify_task(plan: Plan, s: int) -> tuple[int, list[int]]:
    """Measure the Jaccard of every pair sent to shard s and keep those at the threshold. Returns
    (verified pairs, histogram of candidate Jaccard in 20 bins)."""
    cfg = plan.cfg
    own = _payload(plan, s)
    found = []
    for uri in storage.list_files(partitions.part_dir(plan.folder("sent"), s), partitions.SUFFIX):
        got = partitions.get(uri)
        rows_b = got["b"] - plan.bases[s]
        if "shingles" in own:
            j = kernels.pair_jaccard(got["shingles"], got["offsets"], got["ref"],
                                     own["shingles"], own["offsets"], rows_b)
        else:
            j = estimated_jaccard(got["sig"][got["ref"]], own["sig"][rows_b])
        # Copies: views would keep the whole file (sets included) alive; one sender's file at a time.
        found.append((got["a"].copy(), got["b"].copy(), got["pa"].copy(), j))
        del got
    if not found:
        found = [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))]
    a, b, pa, j = (np.concatenate(column) for column in zip(*found))
    hist = np.histogram(j, bins=20, range=(0.0, 1.0))[0].tolist()
    keep = (j >= cfg.threshold) if cfg.verify != "none" else np.ones(len(a), bool)
    if cfg.url_dedup:
        keep &= ~np.isin(b, url_removed(plan, s)["doc"])
    a, b, pa, j = a[keep], b[keep], pa[keep], j[keep]
    partitions.write_partitioned(plan.folder("edges"), plan.names[s], a, plan.partitions, a=a, b=b, pa=pa, j=j)
    return int(keep.sum()), hist
