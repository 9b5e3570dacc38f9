"""Verification of candidate pairs, each shard reading only its own files.

A candidate pair (a, b) joins a better document a and a worse one b, often in different shards. If
b's task read a's shard to compare them, every task would read most shards (quadratic reading as the
corpus grows). Instead the pairs go to a's shard first:

1. send (per shard t, the shard of a): its pairs, minus documents already removed by URL, and the
   shingle sets (exact) or signatures (estimate) of its a's, each sent once to each shard that needs
   it. What moves is proportional to the pairs, not to the shards.
2. verify (per shard s, the shard of b): its own sets against what it received; exact or estimated
   Jaccard against the threshold; the verified edges go on to clustering.

Pairs whose a is an index document (incremental runs) skip step 1: the index holds signatures only,
so they are estimated in step 2.
"""

from __future__ import annotations

import numpy as np

from llm import storage
from llm.data.minhash import kernels, partitions
from llm.data.minhash.lsh import unique_pairs
from llm.data.minhash.plan import PAIRS, Plan, lookup, url_removed
from llm.data.minhash.signatures import estimated_jaccard


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


def send_task(plan: Plan, t: int) -> int:
    """Send the pairs whose better document is in shard t, with that document's set, to the shard of
    the worse one. Returns the number of distinct candidate pairs."""
    rec = partitions.read_partition(plan.folder("pairs"), t, PAIRS)
    a, b = unique_pairs(rec["a"], rec["b"])
    candidates = len(a)
    if not candidates:
        return 0
    pa = lookup(rec["a"], rec["pa"], a)
    if plan.cfg.url_dedup:
        live = ~np.isin(a, url_removed(plan, t)["doc"])
        a, b, pa = a[live], b[live], pa[live]
    own = _payload(plan, t)
    dest = plan.shard_of(b)
    for u in np.unique(dest).tolist():
        sel = dest == u
        senders, ref = np.unique(a[sel], return_inverse=True)
        rows = senders - plan.bases[t]
        if "shingles" in own:
            values, offsets = gather_sets(own["shingles"], own["offsets"], rows)
            payload = {"shingles": values, "offsets": offsets}
        else:
            payload = {"sig": own["sig"][rows]}
        to = storage.join(partitions.part_dir(plan.folder("sent"), u), f"{plan.names[t]}{partitions.SUFFIX}")
        partitions.put(to, a=a[sel], b=b[sel], pa=pa[sel], ref=ref.astype(np.int64), **payload)
    return candidates


def verify_task(plan: Plan, s: int, index) -> tuple[int, int, list[int]]:
    """Measure the Jaccard of every pair sent to shard s and keep those at the threshold. Returns
    (candidate pairs against index documents, verified pairs, histogram of candidate Jaccard in 20
    bins)."""
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
    against_index = 0
    if index is not None:
        rec = partitions.read_partition(plan.folder("index_pairs"), s, PAIRS)
        a, b = unique_pairs(rec["a"], rec["b"])
        against_index = len(a)
        if against_index:
            sig = own["sig"] if "sig" in own else partitions.get(plan.file("sig", s))["sig"]
            j = estimated_jaccard(index.signatures(a), sig[b - plan.bases[s]])
            found.append((a, b, lookup(rec["a"], rec["pa"], a), j))
    if not found:
        found = [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))]
    a, b, pa, j = (np.concatenate(column) for column in zip(*found))
    hist = np.histogram(j, bins=20, range=(0.0, 1.0))[0].tolist()
    keep = (j >= cfg.threshold) if cfg.verify != "none" else np.ones(len(a), bool)
    if cfg.url_dedup:
        keep &= ~np.isin(b, url_removed(plan, s)["doc"])
    a, b, pa, j = a[keep], b[keep], pa[keep], j[keep]
    partitions.write_partitioned(plan.folder("edges"), plan.names[s], a, plan.partitions, a=a, b=b, pa=pa, j=j)
    u, v = np.concatenate([a, b]), np.concatenate([b, a])
    partitions.write_partitioned(storage.join(plan.folder("cc"), "r000"), plan.names[s], u, plan.partitions, u=u, v=v)
    return against_index, int(keep.sum()), hist
