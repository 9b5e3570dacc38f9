"""Gopher repetition signals for a whole batch at once (Rae et al. 2021, table A1).

Lines and paragraphs: a piece is a duplicate when the same document holds an identical piece earlier.
n-grams: each word token's code is the 64-bit hash of its bytes (from the compiled tokenizer) and every
n-gram becomes a 64-bit polynomial hash of its token codes (a collision needs two different tokens or
n-grams of one document to agree on 64 bits), counted per document by a compiled hash table
(`repetition_kernels`). The line and paragraph counts come from `textsignals.text_counts`.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from llm.config import GopherRepetitionConfig
from llm.data import textsignals as ts
from llm.data.repetition_kernels import ngram_repetition
from llm.data.textsignals import Pieces

def piece_signals(counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The duplicate line and paragraph fractions (of pieces and of characters) of each document."""
    out: dict[str, np.ndarray] = {}
    for name, pieces in (("para", "paras"), ("line", "line_runs")):
        out[f"rep_dup_{name}_frac"] = ts.ratio(counts[f"dup_{pieces}"], counts[pieces])
        out[f"rep_dup_{name}_char_frac"] = ts.ratio(counts[f"dup_{pieces[:-1]}_chars"], counts["chars"])
    return out


def ngram_signals(words: Pieces, cfg: GopherRepetitionConfig, n_chars: np.ndarray,
                  rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The top and duplicate n-gram character fractions of each document (`n_chars` code points), or
    only of the documents at `rows` (ascending): then one value per row, in that order."""
    out: dict[str, np.ndarray] = {}
    codes, token_len = _codes(words)
    parent, n_docs = words.parent, words.n_docs
    if rows is not None and len(rows) < n_docs:  # the chosen documents' tokens, renumbered
        chosen = np.zeros(n_docs, dtype=bool)
        chosen[rows] = True
        tokens = chosen[parent]
        codes, token_len = codes[tokens], token_len[tokens]
        parent = (np.cumsum(chosen) - 1)[parent[tokens]]
        n_docs = len(rows)
    top = np.array(sorted(cfg.max_top_ngram_char_frac), np.int64)
    dup = np.array(sorted(cfg.max_dup_ngram_char_frac), np.int64)
    top_chars = np.zeros((len(top), n_docs), np.int64)
    dup_chars = np.zeros((len(dup), n_docs), np.int64)
    doc_starts = np.searchsorted(parent, np.arange(n_docs + 1)).astype(np.int64)
    ngram_repetition(doc_starts, codes, token_len.astype(np.int64), top, dup, top_chars, dup_chars)
    chars = n_chars if n_docs == words.n_docs else n_chars[rows]
    for k, n in enumerate(top):
        out[f"rep_top_{n}gram_char_frac"] = ts.ratio(top_chars[k], chars)
    for k, n in enumerate(dup):
        out[f"rep_dup_{n}gram_char_frac"] = ts.ratio(dup_chars[k], chars)
    return out


def _codes(words: Pieces) -> tuple[np.ndarray, np.ndarray]:
    """Per token a 64-bit code, equal for equal tokens: the compiled tokenizer's byte hash (two different
    tokens of a document share one with odds of about 2**-64 per pair), else Arrow's dictionary codes."""
    if len(words.parent) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    hashes = getattr(words, "hashes", None)
    if hashes is not None:
        return hashes, words.lengths()
    codes = pc.dictionary_encode(words.values).indices.to_numpy(zero_copy_only=False).astype(np.uint64)
    return codes + np.uint64(1), words.lengths()
