"""Connected components of the verified-pair graph as rounds of large-star / small-star over
node-hash partitions (see `clusters` for why), run through the stage's executor.

Records are directed (node, neighbour) rows, an undirected edge being two records, stored under the
partition `node % n`. Each phase is one map over partitions that reads its partition and writes the
new records to the next phase's folder.
"""

from __future__ import annotations

import numpy as np

from llm import storage
from llm.data.minhash import partitions
from llm.data.minhash.clusters import canonical_digest, labels_from_stars, large_star, small_star

RECORDS = {"u": "int64", "v": "int64"}


def _phase(src: str, dst: str, p: int, n: int, large: bool) -> str:
    rec = partitions.read_partition(src, p, RECORDS)
    digest = canonical_digest(rec["u"], rec["v"]) if large else ""
    u, v = (large_star if large else small_star)(rec["u"], rec["v"])
    partitions.write_partitioned(dst, f"{p:05d}", u, n, u=u, v=v)
    return digest


def run_components(folder: str, num_partitions: int, executor, max_rounds: int = 64) -> str:
    """Iterate from the records under `folder/r000` until the edge set stops changing; returns the
    folder holding the converged stars (one record pair per node: node <-> its component's label)."""
    n = num_partitions
    previous = None
    for k in range(max_rounds):
        src, mid, dst = (storage.join(folder, name) for name in (f"r{k:03d}", f"r{k:03d}s", f"r{k + 1:03d}"))
        digests = executor.map(lambda p: _phase(src, mid, p, n, True), list(range(n)), desc="minhash: large-star")
        if digests == previous:
            return src  # the last round changed nothing: `src` is the fixed point
        executor.map(lambda p: _phase(mid, dst, p, n, False), list(range(n)), desc="minhash: small-star")
        storage.delete(mid)
        if k:
            storage.delete(src)  # the round before is kept: it is the answer when this one changes nothing
        previous = digests
    raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")


def labels_of_partition(stars: str, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(node, component label) for the nodes of partition p, sorted by node."""
    rec = partitions.read_partition(stars, p, RECORDS)
    return labels_from_stars(rec["u"], rec["v"])
