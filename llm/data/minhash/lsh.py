"""LSH banding: what `bands x rows` means (the S-curve), choosing it from a threshold, and turning
band collisions within one band-hash range into candidate pairs."""

from __future__ import annotations

import numpy as np

S_CURVE_POINTS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def candidate_probability(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """P(two documents of Jaccard s share at least one band) = 1 - (1 - s^r)^b."""
    return 1.0 - (1.0 - np.power(s, rows)) ** bands


def s_curve(bands: int, rows: int, points=S_CURVE_POINTS) -> dict[float, float]:
    return {float(s): float(candidate_probability(s, bands, rows)) for s in points}


def choose_bands(threshold: float, num_perm: int, fp_weight: float, fn_weight: float) -> tuple[int, int]:
    """The (bands, rows) with bands * rows <= num_perm minimising
    fp_weight * (area under the S-curve below the threshold) + fn_weight * (area above it missed)."""
    grid_lo = np.linspace(0.0, threshold, 200)
    grid_hi = np.linspace(threshold, 1.0, 200)
    best, best_cost = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(candidate_probability(grid_lo, b, r), grid_lo)
            fn = np.trapezoid(1.0 - candidate_probability(grid_hi, b, r), grid_hi)
            cost = fp_weight * fp + fn_weight * fn
            if cost < best_cost - 1e-12:
                best, best_cost = (b, r), cost
    return best


def bucket_of(band_hash: np.ndarray, num_buckets: int) -> np.ndarray:
    """Range partition of the 64-bit band-hash space into `num_buckets` equal slices."""
    top = (band_hash >> np.uint64(32)).astype(np.uint64)
    return ((top * np.uint64(num_buckets)) >> np.uint64(32)).astype(np.int64)


def candidate_pairs(band: np.ndarray, hashes: np.ndarray, doc: np.ndarray, prio: np.ndarray,
                    star_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (better, worse) of documents that share a (band, hash), deduplicated.

    Members of a collision group are ordered by keeper priority (then index); member i is paired with
    the first min(i, star_width) members. Small groups give every pair; a group of thousands of
    copies (a licence text) gives ~star_width pairs per member instead of a quadratic number, and every
    member is still compared with the group's best keeper candidates.
    """
    if len(doc) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((doc, prio, hashes, band))
    band, hashes, doc = band[order], hashes[order], doc[order]
    new_group = np.r_[True, (band[1:] != band[:-1]) | (hashes[1:] != hashes[:-1])]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(doc)), 0))
    pos = np.arange(len(doc)) - group_start
    a_parts, b_parts = [], []
    for k in range(star_width):
        sel = np.flatnonzero(pos > k)
        if len(sel) == 0:
            break
        a_parts.append(doc[group_start[sel] + k])
        b_parts.append(doc[sel])
    if not a_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a, b = np.concatenate(a_parts), np.concatenate(b_parts)
    keep = a != b  # the same document twice in a group cannot happen, but an index copy may
    return unique_pairs(a[keep], b[keep])


def unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (a, b) pairs sorted by (a, b)."""
    if len(a) == 0:
        return a.astype(np.int64), b.astype(np.int64)
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    keep = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])]
    return a[keep], b[keep]
