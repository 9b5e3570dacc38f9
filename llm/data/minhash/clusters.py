"""Clustering verified near-duplicate pairs without chaining.

Why not plain connected components: components link documents through intermediate ones (A~B, B~C
puts A and C together although A and C may share little), and templated mail or feed items chain
whole corpora together that way. So components are only used to cut the work into independent
pieces; inside each, removal is decided by a greedy star rule:

    visit documents in keeper order (config rule, then input order); a document that no earlier keeper
    has claimed becomes a keeper and claims every unclaimed document it has a verified edge to.

Every removed document therefore has a verified edge, at the threshold, to the keeper it is removed in
favour of; and of every verified pair at least one document is removed (whichever is visited first is
either a keeper, which claims the other, or claimed). Keepers are the lexicographically first maximal
independent set of the verified graph, so they are the same on every run.

Components: the large-star / small-star iteration (Kiveris et al., "Connected Components in
MapReduce and Beyond", 2014), which converges in O(log^2 n) rounds of a node-keyed shuffle. We chose it
over a spilled union-find because each round is a plain map over node-hash partitions: memory per task
is bounded by its partition of the edge list, no process ever holds the graph, and it runs on the same
executor as everything else. Label propagation would need as many rounds as the longest chain.
"""

from __future__ import annotations

import numpy as np


def _sorted_records(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((v, u))
    u, v = u[order], v[order]
    keep = np.r_[True, (u[1:] != u[:-1]) | (v[1:] != v[:-1])] if len(u) else np.zeros(0, bool)
    return u[keep], v[keep]


def _group_min(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For records sorted by u: group starts, and min(u, min v) per record's group."""
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    mins = np.minimum(np.minimum.reduceat(v, starts), u[starts])
    sizes = np.diff(np.r_[starts, len(u)])
    return starts, np.repeat(mins, sizes), sizes


def _both_ways(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([x, y]), np.concatenate([y, x])


def large_star(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Records (u, v) holding every neighbour v of each node u in this partition (both directions of an
    edge are records). Every neighbour larger than u is re-linked to the smallest of u's neighbourhood.
    Returns the new edges as records in both directions."""
    if len(u) == 0:
        return u, v
    u, v = _sorted_records(u, v)
    _, m, _ = _group_min(u, v)
    sel = v > u
    return _both_ways(v[sel], m[sel])


def small_star(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every node u links itself and its smaller neighbours to the smallest of them."""
    sel = v < u
    u, v = u[sel], v[sel]
    if len(u) == 0:
        return u, v
    u, v = _sorted_records(u, v)
    starts, m, _ = _group_min(u, v)
    x = np.concatenate([v, u[starts]])
    y = np.concatenate([m, m[starts]])
    keep = x != y
    return _both_ways(x[keep], y[keep])


def labels_from_stars(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """After convergence every component is a star around its smallest node: (node, component label)."""
    if len(u) == 0:
        return u, v
    u, v = _sorted_records(u, v)
    starts, m, _ = _group_min(u, v)
    return u[starts], m[starts]


def canonical_digest(u: np.ndarray, v: np.ndarray) -> str:
    """Digest of the undirected edge set held in these records (to detect convergence)."""
    import hashlib

    x, y = np.minimum(u, v), np.maximum(u, v)
    x, y = _sorted_records(x, y)
    return hashlib.blake2b(x.tobytes() + b"|" + y.tobytes(), digest_size=16).hexdigest()


def connected_components(a: np.ndarray, b: np.ndarray, max_rounds: int = 100) -> dict[int, int]:
    """In-memory components of the edges (a, b): node -> smallest node of its component. Runs the same
    large-star / small-star rounds as the distributed stage, on one partition (tests, small inputs)."""
    u, v = _both_ways(a.astype(np.int64), b.astype(np.int64))
    digest = canonical_digest(u, v)
    for _ in range(max_rounds):
        u, v = small_star(*large_star(u, v))
        new = canonical_digest(u, v)
        if new == digest:
            break
        digest = new
    nodes, labels = labels_from_stars(u, v)
    return dict(zip(nodes.tolist(), labels.tolist()))


def greedy_stars(a: np.ndarray, b: np.ndarray, prio_a: np.ndarray) -> np.ndarray:
    """Removal by the greedy star rule over verified edges (a better than b in keeper order).

    Keeper order is (`prio_a`, `a`), the same key that oriented the edges; edges of different components
    never interact, so one pass over all edges of any set of whole components gives their stars.
    Returns the indices of the chosen edges: edge i removes b[i] in favour of keeper a[i].
    """
    order = np.lexsort((b, a, prio_a))
    claimed: set[int] = set()
    chosen = []
    # Sequential by nature (each decision depends on earlier ones); cost is one set lookup per edge.
    for i, x, y in zip(order.tolist(), a[order].tolist(), b[order].tolist()):
        if x in claimed or y in claimed:
            continue
        claimed.add(y)
        chosen.append(i)
    return np.array(chosen, dtype=np.int64)
