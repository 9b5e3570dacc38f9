"""Gopher repetition signals for a whole batch at once (Rae et al. 2021, table A1).

Lines and paragraphs: a piece is a duplicate when the same document holds an identical piece earlier.
n-grams: word tokens are dictionary-encoded once per batch and every n-gram becomes a 64-bit
polynomial hash of its token codes (a collision needs two different n-grams of one document to
agree on 64 bits), so counting and finding repeats are numpy sorts, not Python loops.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from llm.config import GopherRepetitionConfig
from llm.data import textsignals as ts
from llm.data.textsignals import Pieces

_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio): spreads codes over the word
_DOC_MULT = np.uint64(0xC2B2AE3D27D4EB4F)


def repetition_signals(text, cfg: GopherRepetitionConfig, words: Pieces) -> dict[str, np.ndarray]:
    """Signal name -> value per document."""
    n_chars = ts.lengths(text)
    out: dict[str, np.ndarray] = {}
    stripped = pc.utf8_trim_whitespace(text)
    paras = ts.split(stripped, r"\n{2,}", regex=True)
    lines = ts.split(text, r"\n+", regex=True)
    for name, pieces in (("para", paras), ("line", lines)):
        dup = pieces.duplicates()
        out[f"rep_dup_{name}_frac"] = ts.ratio(pieces.count(dup), pieces.count())
        out[f"rep_dup_{name}_char_frac"] = ts.ratio(pieces.total(pieces.lengths() * dup), n_chars)
    codes, token_len = _codes(words)
    top, dup = cfg.max_top_ngram_char_frac, cfg.max_dup_ngram_char_frac
    for n, starts, h, chars in _ngrams(words.parent, codes, token_len, max([*top, *dup], default=0)):
        if n in top:
            out[f"rep_top_{n}gram_char_frac"] = ts.ratio(_top_ngram_chars(words.parent, starts, h, chars,
                                                                          words.n_docs), n_chars)
        if n in dup:
            out[f"rep_dup_{n}gram_char_frac"] = ts.ratio(_dup_ngram_chars(words.parent, starts, h, n, token_len,
                                                                          words.n_docs), n_chars)
    return out


def _codes(words: Pieces) -> tuple[np.ndarray, np.ndarray]:
    if len(words.values) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    codes = pc.dictionary_encode(words.values).indices.to_numpy(zero_copy_only=False).astype(np.uint64)
    return codes + np.uint64(1), words.lengths()


def _ngrams(parent: np.ndarray, codes: np.ndarray, token_len: np.ndarray, max_n: int):
    """Yield (n, start positions, hash, characters joined by spaces) of every n-gram inside one document,
    for n = 1..max_n. The hash of n-grams extends that of (n-1)-grams by one token, so each n costs one
    pass over the tokens."""
    total = len(codes)
    cum = np.concatenate([[0], np.cumsum(token_len)])
    h = np.zeros(total, np.uint64)
    with np.errstate(over="ignore"):
        for n in range(1, max_n + 1):
            m = total - n + 1
            if m <= 0:
                empty = np.zeros(0, np.int64)
                yield n, empty, np.zeros(0, np.uint64), empty
                continue
            h = h[:m] * _MULT + codes[n - 1:n - 1 + m]
            starts = np.flatnonzero(parent[:m] == parent[n - 1:n - 1 + m])
            chars = cum[starts + n] - cum[starts] + (n - 1)
            # Keys never meet across documents: the document index is mixed into the key.
            yield n, starts, h[starts] ^ (parent[starts].astype(np.uint64) * _DOC_MULT), chars


def _top_ngram_chars(parent, starts, h, chars, n_docs: int) -> np.ndarray:
    """Per document: characters of its most frequent n-gram times its count (ties: the earliest)."""
    out = np.zeros(n_docs, np.float64)
    if len(starts) == 0:
        return out
    first, counts = ts.first_occurrences(h)
    doc = parent[starts[first]]
    order = np.lexsort((first, -counts, doc))  # per document: highest count, then earliest
    doc_sorted = doc[order]
    head = np.ones(len(order), bool)
    head[1:] = doc_sorted[1:] != doc_sorted[:-1]
    best = order[head]
    out[doc[best]] = chars[first[best]] * counts[best]
    return out


def _dup_ngram_chars(parent, starts, h, n: int, token_len, n_docs: int) -> np.ndarray:
    """Per document: characters of the words covered by a repeat of an earlier n-gram, each word once."""
    if len(starts) == 0:
        return np.zeros(n_docs, np.float64)
    repeat = np.ones(len(h), bool)
    repeat[ts.first_occurrences(h)[0]] = False
    cover = np.zeros(len(token_len) + 1, np.int64)
    np.add.at(cover, starts[repeat], 1)
    np.add.at(cover, starts[repeat] + n, -1)
    covered = np.cumsum(cover[:-1]) > 0
    return np.bincount(parent, weights=(token_len * covered).astype(np.float64), minlength=n_docs)
