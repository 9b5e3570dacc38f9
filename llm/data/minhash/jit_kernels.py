"""The MinHash stage's compiled loops as numba kernels: tokens, n-grams, signatures and exact Jaccard.

Callers use `kernels`, which loads these built ahead of time when it can (no numba in the process)
and falls back to this module. These are the per-character and per-shingle loops; written in numpy
they are a dozen passes over arrays much larger than the cache, compiled they are one pass. Each kernel
takes and returns plain arrays and has no Python objects inside, so callers batch many documents per
call. Compiled code is cached beside this file (`llm.compiled.njit_cached`), so a process pays the
compile once per installation and a fraction of a second to load it after that.

All arithmetic is on uint64 and wraps modulo 2**64 (numba, like C, does not check overflow); mixing
uint64 with signed integers would promote to float, so every constant is a uint64.
"""

from __future__ import annotations

import numpy as np

from llm.compiled import njit_cached
from llm.data.minhash.char_codes import EXPANDS as _EXPANDS
from llm.data.minhash.char_codes import LOW_BITS as _LOW_BITS
from llm.data.minhash.char_codes import SINGLE, WORD

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ONE = np.uint64(1)


@njit_cached(inline="always")
def mix(x):
    """splitmix64's finalizer: a bijective 64-bit mixer."""
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


@njit_cached(inline="always")
def _finish_token(h, length):
    return mix(h ^ (np.uint64(length) * _GOLDEN))


@njit_cached(inline="always")
def _tail(byte):
    """The six payload bits of a UTF-8 continuation byte."""
    return np.uint32(byte) & np.uint32(0x3F)


@njit_cached
def decode_lower(data, offsets, lower, expand_from, expand_to):
    """Lower-cased code points of documents given as UTF-8 bytes (`data[offsets[d]:offsets[d + 1]]`).
    `lower` maps a code point to its lower case; when it carries the `_EXPANDS` flag the lower case is
    two code points, the second `expand_to[k]` for the k with `expand_from[k]` equal to the code point.
    A lead byte whose sequence would run past its document (bytes Arrow did not validate) reads as
    U+FFFD, a separator, so nothing is read out of bounds. Returns (codes, doc_ends)."""
    docs = offsets.shape[0] - 1
    codes = np.empty(2 * (offsets[docs] - offsets[0]), np.uint32)  # a byte gives at most two code points
    doc_ends = np.empty(docs, np.int64)
    n = 0
    for d in range(docs):
        i, stop = offsets[d], offsets[d + 1]
        while i < stop:
            b0 = np.uint32(data[i])
            width = 1 if b0 < 0x80 else 2 if b0 < 0xE0 else 3 if b0 < 0xF0 else 4
            if i + width > stop or (width > 1 and b0 < 0xC0):  # truncated, or a stray continuation byte
                cp = np.uint32(0xFFFD)
                i += 1
            elif b0 < 0x80:
                cp = b0
                i += 1
            elif b0 < 0xE0:
                cp = ((b0 & np.uint32(0x1F)) << np.uint32(6)) | _tail(data[i + 1])
                i += 2
            elif b0 < 0xF0:
                cp = ((b0 & np.uint32(0x0F)) << np.uint32(12)) | (_tail(data[i + 1]) << np.uint32(6)) | _tail(data[i + 2])
                i += 3
            else:
                cp = (((b0 & np.uint32(0x07)) << np.uint32(18)) | (_tail(data[i + 1]) << np.uint32(12))
                      | (_tail(data[i + 2]) << np.uint32(6)) | _tail(data[i + 3]))
                i += 4
            if cp >= 0x110000:
                cp = np.uint32(0xFFFD)
            low = lower[cp]
            codes[n] = low & _LOW_BITS
            n += 1
            if low & _EXPANDS:
                for k in range(expand_from.shape[0]):
                    if expand_from[k] == cp:
                        codes[n] = expand_to[k]
                        n += 1
        doc_ends[d] = n
    return codes[:n], doc_ends


@njit_cached
def tokenize(codes, doc_ends, classes, char_pos):
    """Tokens of documents given as one array of code points (`doc_ends`: cumulative lengths).

    A token is a run of word characters or one character of a no-space script (`classes` 1 and 2).
    Its hash is sum((code + 1) * char_pos[position]) mixed with its length; positions past the last
    multiplier share it. Returns (hashes, starts, lengths, token_ends): `token_ends[d]` is the number
    of tokens in documents 0..d."""
    n = codes.shape[0]
    hashes = np.empty(n, np.uint64)
    starts = np.empty(n, np.int64)
    lengths = np.empty(n, np.int64)
    token_ends = np.zeros(doc_ends.shape[0], np.int64)
    last = char_pos.shape[0] - 1
    t = 0
    begin = 0
    for d in range(doc_ends.shape[0]):
        end = doc_ends[d]
        h = np.uint64(0)
        length = 0
        for i in range(begin, end):
            c = codes[i]
            k = classes[c]
            if k == WORD:
                if length == 0:
                    starts[t] = i
                h += (np.uint64(c) + _ONE) * char_pos[min(length, last)]
                length += 1
                continue
            if length:
                hashes[t], lengths[t] = _finish_token(h, length), length
                t += 1
                h, length = np.uint64(0), 0
            if k == SINGLE:
                hashes[t], starts[t], lengths[t] = _finish_token((np.uint64(c) + _ONE) * char_pos[0], 1), i, 1
                t += 1
        if length:
            hashes[t], lengths[t] = _finish_token(h, length), length
            t += 1
        token_ends[d] = t
        begin = end
    return hashes[:t], starts[:t], lengths[:t], token_ends


@njit_cached
def char_units(codes, starts, lengths, token_ends):
    """Character units of each document: its tokens' characters joined by single spaces, each mixed
    into a 64-bit hash. Returns (units, unit_ends)."""
    total = 0
    for t in range(lengths.shape[0]):
        total += lengths[t] + 1
    units = np.empty(total, np.uint64)
    unit_ends = np.zeros(token_ends.shape[0], np.int64)
    u = 0
    t = 0
    for d in range(token_ends.shape[0]):
        first = True
        while t < token_ends[d]:
            if not first:
                units[u] = mix(np.uint64(32))
                u += 1
            first = False
            for i in range(starts[t], starts[t] + lengths[t]):
                units[u] = mix(np.uint64(codes[i]))
                u += 1
            t += 1
        unit_ends[d] = u
    return units[:u], unit_ends


@njit_cached
def ngram_hashes(units, unit_ends, n, pos):
    """Hashes of every window of n consecutive units of a document: mix(sum(units[i + j] * pos[j])).
    A document shorter than n units gets one shingle of all its units (marked with pos[n] x its
    width), so short texts still have a signature. Returns (hashes, owner document)."""
    docs = unit_ends.shape[0]
    out = np.empty(units.shape[0] + docs, np.uint64)
    owner = np.empty(units.shape[0] + docs, np.int64)
    k = 0
    begin = 0
    for d in range(docs):
        end = unit_ends[d]
        size = end - begin
        if size >= n:
            for i in range(begin, end - n + 1):
                h = np.uint64(0)
                for j in range(n):
                    h += units[i + j] * pos[j]
                out[k], owner[k] = mix(h), d
                k += 1
        elif size > 0:
            h = np.uint64(size) * pos[n]
            for j in range(size):
                h += units[begin + j] * pos[j]
            out[k], owner[k] = mix(h), d
            k += 1
        begin = end
    return out[:k], owner[:k]


@njit_cached
def minhash(shingles, offsets, a, b, empty):
    """(documents, permutations) signature: per document and permutation p, the minimum over its
    shingles x of a[p] * x + b[p] (mod 2**64); `empty` for a document without shingles."""
    docs = offsets.shape[0] - 1
    perms = a.shape[0]
    sig = np.empty((docs, perms), np.uint64)
    for d in range(docs):
        row = sig[d]
        row[:] = empty
        for i in range(offsets[d], offsets[d + 1]):
            x = shingles[i]
            for p in range(perms):  # branch-free, so it vectorises: one multiply-add-min per lane
                row[p] = min(row[p], a[p] * x + b[p])
    return sig


@njit_cached
def band_hashes(sig, bands, rows):
    """(documents, bands) hash of each band's `rows` signature values: h = mix(h * golden + value)."""
    docs = sig.shape[0]
    out = np.empty((docs, bands), np.uint64)
    for d in range(docs):
        for band in range(bands):
            h = np.uint64(0)
            for r in range(band * rows, (band + 1) * rows):
                h = mix(h * _GOLDEN + sig[d, r])
            out[d, band] = h
    return out


@njit_cached
def pair_jaccard(shingles_a, offsets_a, rows_a, shingles_b, offsets_b, rows_b):
    """Exact Jaccard of each pair (rows_a[i] of set A, rows_b[i] of set B) of sorted unique shingle
    arrays, by a merge of the two; 1.0 for two empty sets."""
    out = np.empty(rows_a.shape[0], np.float64)
    for k in range(rows_a.shape[0]):
        i, i_end = offsets_a[rows_a[k]], offsets_a[rows_a[k] + 1]
        j, j_end = offsets_b[rows_b[k]], offsets_b[rows_b[k] + 1]
        size = (i_end - i) + (j_end - j)
        common = 0
        while i < i_end and j < j_end:
            x, y = shingles_a[i], shingles_b[j]
            if x < y:
                i += 1
            elif x > y:
                j += 1
            else:
                common += 1
                i += 1
                j += 1
        out[k] = 1.0 if size == 0 else common / (size - common)
    return out
