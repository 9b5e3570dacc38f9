import numpy as np

from llm.data.minhash.clusters import connected_components, greedy_stars


def _bfs_components(a, b):
    adj: dict[int, set[int]] = {}
    for x, y in zip(a.tolist(), b.tolist()):
        adj.setdefault(x, set()).add(y)
        adj.setdefault(y, set()).add(x)
    label = {}
    for start in sorted(adj):
        if start in label:
            continue
        stack, seen = [start], {start}
        while stack:
            for y in adj[stack.pop()]:
                if y not in seen:
                    seen.add(y)
                    stack.append(y)
        for x in seen:
            label[x] = min(seen)
    return label


def test_components_match_breadth_first_search():
    rng = np.random.default_rng(0)
    for n, e in [(300, 200), (2000, 2500)]:
        a, b = rng.integers(0, n, e), rng.integers(0, n, e)
        keep = a != b
        assert connected_components(a[keep], b[keep]) == _bfs_components(a[keep], b[keep])
    path = np.arange(500)  # one long chain, visited in the worst order
    assert set(connected_components(path[::-1][:-1], path[::-1][1:]).values()) == {0}


def test_greedy_stars_never_chain_and_cover_every_edge():
    # a chain 0-1-2-3-4 (each similar only to its neighbours): components would remove 1..4 for 0
    a, b = np.arange(4), np.arange(1, 5)
    chosen = greedy_stars(a, b, np.zeros(4))
    assert sorted(zip(b[chosen].tolist(), a[chosen].tolist())) == [(1, 0), (3, 2)]  # 0, 2, 4 stay
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 300, 800), rng.integers(0, 300, 800)
    a, b = np.minimum(a, b), np.maximum(a, b)  # orient: smaller index ranks first (priority 0 for all)
    keep = a != b
    a, b = a[keep], b[keep]
    chosen = greedy_stars(a, b, np.zeros(len(a)))
    removed = dict(zip(b[chosen].tolist(), a[chosen].tolist()))
    edges = set(zip(a.tolist(), b.tolist()))
    assert all((k, d) in edges and k not in removed for d, k in removed.items())  # keeper is an edge away and kept
    assert all(x in removed or y in removed for x, y in edges)  # no verified pair survives whole


def test_priority_decides_the_keeper():
    a, b = np.array([7, 7]), np.array([3, 5])
    chosen = greedy_stars(a, b, np.array([-10.0, -10.0]))  # 7 ranks before 3 and 5 by priority
    assert sorted(b[chosen].tolist()) == [3, 5]
