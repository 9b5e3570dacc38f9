import numpy as np

from llm.data.minhash.lsh import S_CURVE_POINTS, candidate_pairs, choose_bands, s_curve
from llm.data.minhash.shingles import ShingleBatch
from llm.data.minhash.signatures import MinHasher, band_hashes


def test_measured_candidate_rate_follows_the_s_curve():
    """1200 pairs at each exact Jaccard; the share that collide in at least one band is within a few
    points of 1 - (1 - s^r)^b (binomial standard error here is at most 1.5 points)."""
    rng = np.random.default_rng(5)
    hasher, bands, rows, size, pairs = MinHasher(112, seed=1), 14, 8, 200, 1200
    curve = s_curve(bands, rows)
    for s in S_CURVE_POINTS:
        shared = round(s * size)
        left = (size - shared) // 2
        sets = []
        for _ in range(pairs):
            pool = rng.integers(0, 2**40, size, dtype=np.uint64)
            sets += [np.unique(pool[: shared + left]), np.unique(np.r_[pool[:shared], pool[shared + left:]])]
        offsets = np.r_[0, np.cumsum([len(x) for x in sets])]
        bh = band_hashes(hasher.signatures(ShingleBatch(np.concatenate(sets), offsets)), bands, rows)
        measured = (bh[0::2] == bh[1::2]).any(axis=1).mean()
        assert abs(measured - curve[s]) < 0.05, (s, measured, curve[s])


def test_choose_bands_trades_false_positives_against_misses():
    b, r = choose_bands(0.8, 112, 0.5, 0.5)
    assert b * r <= 112 and 0.7 < (1 / b) ** (1 / r) < 0.9  # the curve's midpoint sits near the threshold
    b2, r2 = choose_bands(0.8, 112, 0.1, 0.9)  # misses cost more: the curve moves left
    assert (1 / b2) ** (1 / r2) < (1 / b) ** (1 / r)


def test_candidate_pairs_are_oriented_by_priority_and_bounded_for_big_groups():
    # band 0: docs 5, 3, 9 collide; band 1: 3 and 9 collide again (same pair, reported once)
    band = np.array([0, 0, 0, 1, 1, 0])
    h = np.array([7, 7, 7, 2, 2, 8], dtype=np.uint64)
    doc = np.array([5, 3, 9, 3, 9, 4])
    prio = np.array([0.0, 1.0, -1.0, 1.0, -1.0, 0.0])  # 9 ranks first, then 5, then 3
    a, b = candidate_pairs(band, h, doc, prio, star_width=16)
    assert sorted(zip(a.tolist(), b.tolist())) == [(5, 3), (9, 3), (9, 5)]
    n = 1000  # a thousand copies of one text: each pairs with the first 4 only
    a, b = candidate_pairs(np.zeros(n, int), np.ones(n, np.uint64), np.arange(n), np.zeros(n), star_width=4)
    assert len(a) == 4 * n - 10 and set(a.tolist()) == {0, 1, 2, 3}
