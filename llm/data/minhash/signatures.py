"""MinHash signatures with a seeded family of 64-bit permutations.

Permutation p maps a shingle hash x to `a_p * x + b_p mod 2**64` with odd `a_p`: a bijection on 64-bit
words, so the minimum over a document's shingles is a MinHash draw. Shingle hashes are already mixed
(splitmix64), which is what makes this cheap family behave like a random one. The work is one
multiply-add-minimum per (shingle, permutation), in a compiled loop that holds nothing but the
signature matrix (`kernels.minhash`).
"""

from __future__ import annotations

import numpy as np

from llm.data.minhash import kernels
from llm.data.minhash.shingles import ShingleBatch

EMPTY = np.iinfo(np.uint64).max  # signature value of a document with no shingles


class MinHasher:
    """`num_perm` seeded 64-bit permutations; `signatures` turns shingle batches into (docs, num_perm)."""

    def __init__(self, num_perm: int, seed: int):
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2)

    def signatures(self, batch: ShingleBatch) -> np.ndarray:
        return kernels.minhash(batch.hashes, batch.offsets, self.a, self.b, np.uint64(EMPTY))


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) 64-bit hashes of each band's `rows` signature values."""
    if bands * rows > sig.shape[1]:
        raise ValueError(f"{bands} bands x {rows} rows need {bands * rows} signature values, not {sig.shape[1]}")
    return kernels.band_hashes(np.ascontiguousarray(sig), bands, rows)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Share of equal signature values per row pair: an unbiased Jaccard estimate."""
    return (sig_a == sig_b).mean(axis=1)
