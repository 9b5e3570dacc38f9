"""Shingles: the set of hashed word or character n-grams of a document's normalized text.

Hashing is vectorised over a whole batch of documents: tokens are hashed once by pandas' C hash, and
n-grams are combined with numpy over the concatenated token hashes of the batch, so there is no Python
loop over shingles. Windows that would cross a document boundary are masked out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# Scripts written without spaces between words: each character is a token, so a 5-gram is 5 characters
# (a sensible unit for Chinese and Japanese, and a workable one for Thai, Lao, Khmer and Burmese without a
# dictionary segmenter). Hangul is left out: Korean separates words with spaces.
_NO_SPACE_SCRIPTS = (
    "\u0e00-\u0e7f"  # Thai
    "\u0e80-\u0eff"  # Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
)
# A token is one character of those scripts or a run of other letters/digits; punctuation, symbols and
# whitespace only separate tokens, so re-punctuated or re-spaced copies still match.
_TOKEN = re.compile(f"[{_NO_SPACE_SCRIPTS}]|[^\\W_{_NO_SPACE_SCRIPTS}]+")

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective 64-bit mixer (avalanches every input bit)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x


def tokens(text: str) -> list[str]:
    """Normalized word tokens of `text` (lower-cased; CJK/Thai split per character)."""
    return _TOKEN.findall(text.lower())


@dataclass
class ShingleBatch:
    """Shingle hashes of a batch of documents, concatenated: document i owns
    `hashes[offsets[i]:offsets[i + 1]]` (sorted and unique within the document)."""

    hashes: np.ndarray  # uint64
    offsets: np.ndarray  # int64, len(documents) + 1

    def of(self, i: int) -> np.ndarray:
        return self.hashes[self.offsets[i]:self.offsets[i + 1]]

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def _ngram_hashes(units: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Combine per-unit hashes into n-gram hashes per document. Documents shorter than n units get one
    shingle of all their units, so short texts still have a signature. Returns (hashes, owner doc)."""
    docs = len(lengths)
    owner = np.repeat(np.arange(docs, dtype=np.int64), lengths)
    starts = np.zeros(docs + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    total = len(units)
    if total == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    # Window i covers units i .. i+w-1 where w = min(n, length of its document).
    width = np.minimum(n, lengths)[owner]
    pos = np.arange(total, dtype=np.int64) - starts[owner]
    valid = pos + width <= lengths[owner]
    h = np.zeros(total, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            idx = np.minimum(np.arange(total) + k, total - 1)
            part = np.where(k < width, units[idx], np.uint64(0))
            h = mix64(h * _GOLDEN + part)
    return h[valid], owner[valid]


_SHINGLE_BITS = 40  # shingles are 40-bit: collisions within one document's few thousand are ~1e-6 rare
_OWNER_LIMIT = 1 << (64 - _SHINGLE_BITS)


def _unique_per_doc(hashes: np.ndarray, owner: np.ndarray, docs: int) -> ShingleBatch:
    # One 64-bit key (document, shingle) sorts 3-7x faster than a two-key lexsort.
    if docs >= _OWNER_LIMIT:
        raise ValueError(f"at most {_OWNER_LIMIT - 1} documents per shingle batch")
    key = (owner.astype(np.uint64) << np.uint64(_SHINGLE_BITS)) | (hashes >> np.uint64(64 - _SHINGLE_BITS))
    key = np.sort(key, kind="stable")
    if len(key):
        key = key[np.r_[True, key[1:] != key[:-1]]]
    owner = (key >> np.uint64(_SHINGLE_BITS)).astype(np.int64)
    offsets = np.zeros(docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=docs), out=offsets[1:])
    return ShingleBatch(key & np.uint64((1 << _SHINGLE_BITS) - 1), offsets)


def word_shingles(texts: list[str], n: int) -> ShingleBatch:
    """Hashed word n-grams of each text."""
    import pandas as pd

    toks = [tokens(t) for t in texts]
    lengths = np.fromiter((len(t) for t in toks), dtype=np.int64, count=len(toks))
    flat = np.array([w for t in toks for w in t], dtype=object)
    # pandas' hash_array is a keyed SipHash in C with a fixed key: the same on every run and process.
    units = pd.util.hash_array(flat) if len(flat) else np.zeros(0, np.uint64)
    h, owner = _ngram_hashes(units.astype(np.uint64), lengths, n)
    return _unique_per_doc(h, owner, len(texts))


def char_shingles(texts: list[str], n: int) -> ShingleBatch:
    """Hashed character n-grams of each text, over its tokens joined by single spaces."""
    norm = [" ".join(tokens(t)) for t in texts]
    codes = [np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32) for t in norm]
    lengths = np.fromiter((len(c) for c in codes), dtype=np.int64, count=len(codes))
    units = mix64(np.concatenate(codes).astype(np.uint64)) if codes and lengths.sum() else np.zeros(0, np.uint64)
    h, owner = _ngram_hashes(units, lengths, n)
    return _unique_per_doc(h, owner, len(texts))


def shingle(texts: list[str], kind: str, n: int) -> ShingleBatch:
    """Shingles of `texts`: `kind` is "word" or "char"."""
    if kind == "word":
        return word_shingles(texts, n)
    if kind == "char":
        return char_shingles(texts, n)
    raise ValueError(f"unknown shingle kind {kind!r} (word or char)")


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique shingle arrays."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)
