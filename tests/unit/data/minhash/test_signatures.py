import numpy as np

from llm.data.minhash.shingles import ShingleBatch
from llm.data.minhash.signatures import MinHasher, band_hashes, estimated_jaccard


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


def test_memory_bound_chunks_give_the_same_signatures():
    rng = np.random.default_rng(1)
    batch = ShingleBatch(rng.integers(0, 2**40, 5000, dtype=np.uint64), np.array([0, 7, 1000, 1001, 4000, 5000]))
    big = MinHasher(64, seed=9).signatures(batch)
    small = MinHasher(64, seed=9, memory_bytes=64 * 8 * 2 * 100)  # 100 shingles per chunk
    assert small.chunk_rows == 100
    assert np.array_equal(big, small.signatures(batch))
    assert np.array_equal(big[1], batch.hashes[7:1000, None].__mul__(MinHasher(64, 9).a).__add__(MinHasher(64, 9).b).min(axis=0))


def test_seed_changes_the_family_and_band_hashes_follow_bands():
    rng = np.random.default_rng(2)
    batch = _pair_batch(rng, 1.0)
    s1, s2 = MinHasher(32, 1).signatures(batch), MinHasher(32, 2).signatures(batch)
    assert np.array_equal(s1[0], s1[1]) and not np.array_equal(s1, s2)
    bh = band_hashes(s1, 4, 8)
    assert bh.shape == (2, 4) and np.array_equal(bh[0], bh[1])
