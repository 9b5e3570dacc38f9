"""Gopher repetition signals for a whole batch at once (Rae et al. 2021, table A1).

Lines and paragraphs: a piece is a duplicate when the same document holds an identical piece earlier.
n-grams: word tokens are dictionary-encoded once per batch and every n-gram becomes a 64-bit
polynomial hash of its token codes (a collision needs two different n-grams of one document to
agree on 64 bits), counted per document by a compiled hash table (`repetition_kernels`).
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from llm.config import GopherRepetitionConfig
from llm.data import textsignals as ts
from llm.data.repetition_kernels import ngram_repetition
from llm.data.textsignals import Pieces

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
    top = np.array(sorted(cfg.max_top_ngram_char_frac), np.int64)
    dup = np.array(sorted(cfg.max_dup_ngram_char_frac), np.int64)
    top_chars = np.zeros((len(top), words.n_docs), np.int64)
    dup_chars = np.zeros((len(dup), words.n_docs), np.int64)
    doc_starts = np.searchsorted(words.parent, np.arange(words.n_docs + 1)).astype(np.int64)
    ngram_repetition(doc_starts, codes, token_len.astype(np.int64), top, dup, top_chars, dup_chars)
    for k, n in enumerate(top):
        out[f"rep_top_{n}gram_char_frac"] = ts.ratio(top_chars[k], n_chars)
    for k, n in enumerate(dup):
        out[f"rep_dup_{n}gram_char_frac"] = ts.ratio(dup_chars[k], n_chars)
    return out


def _codes(words: Pieces) -> tuple[np.ndarray, np.ndarray]:
    if len(words.values) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    codes = pc.dictionary_encode(words.values).indices.to_numpy(zero_copy_only=False).astype(np.uint64)
    return codes + np.uint64(1), words.lengths()
