import numpy as np

from llm.data.minhash.shingles import ShingleBatch
from llm.data.minhash.signatures import EMPTY, MinHasher, band_hashes, estimated_jaccard


def _pair_batch(rng, s: float, size: int = 400) -> ShingleBatch:
    """Two shingle sets with Jaccard exactly s (shared / union, union = size)."""
    shared = round(s * size)
    pool = rng.choice(2**40, size, replace=False).astype(np.uint64)
    left = (size - shared) // 2
    a = np.sort(pool[: shared + left])
    b = np.sort(np.r_[pool[:shared], pool[shared + left:]])
    return ShingleBatch(np.r_[a, b], np.array([0, len(a), len(a) + len(b)]))


def test_estimate_is_unbiased_and_tight():
    rng = np.random.default_rng(0)
    hasher = MinHasher(256, seed=3)
    for s in (0.2, 0.5, 0.8, 0.95):
        est = [estimated_jaccard(*np.split(hasher.signatures(_pair_batch(rng, s)), 2))[0] for _ in range(40)]
        exact = round(s * 400) / 400
        assert abs(np.mean(est) - exact) < 0.02, s


def test_signatures_are_the_minimum_of_each_permutation_over_the_shingles():
    rng = np.random.default_rng(1)
    batch = ShingleBatch(rng.integers(0, 2**40, 5000, dtype=np.uint64), np.array([0, 7, 1000, 1000, 4000, 5000]))
    hasher = MinHasher(64, seed=9)
    sig = hasher.signatures(batch)
    with np.errstate(over="ignore"):
        for d in (0, 1, 3, 4):
            rows = batch.of(d)[:, None] * hasher.a + hasher.b
            assert np.array_equal(sig[d], rows.min(axis=0))
    assert (sig[2] == EMPTY).all()  # no shingles, no draw


def test_seed_changes_the_family_and_band_hashes_follow_bands():
    rng = np.random.default_rng(2)
    batch = _pair_batch(rng, 1.0)
    s1, s2 = MinHasher(32, 1).signatures(batch), MinHasher(32, 2).signatures(batch)
    assert np.array_equal(s1[0], s1[1]) and not np.array_equal(s1, s2)
    bh = band_hashes(s1, 4, 8)
    assert bh.shape == (2, 4) and np.array_equal(bh[0], bh[1])
