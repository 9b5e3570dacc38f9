"""Compiled n-gram loops of the Gopher repetition signals: one hash table per document and n.

Tokens arrive as one batch (document index, token code, token length per token, documents in order).
Every n-gram is the 64-bit polynomial hash of its token codes, extended by one token per n, so a
document costs one pass over its tokens per n. A table sized to twice the document's n-grams (open
addressing) counts them; sorting the whole batch's n-grams, as a vectorised version must, costs
several times more.
"""

from __future__ import annotations

import numpy as np

from llm.compiled import njit_cached

MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio): spreads codes over the word


@njit_cached(nogil=True)
def ngram_repetition(doc_starts, codes, token_len, top_ns, dup_ns, top_out, dup_out):  # pragma: no cover
    """Per document d (tokens doc_starts[d]:doc_starts[d+1]) and each n in top_ns / dup_ns:

    top_out[k, d]: characters of the most frequent n-gram (top_ns[k]) times its count, the earliest
      one on ties; an n-gram's characters are its tokens' plus the n - 1 spaces between them;
    dup_out[k, d]: characters of the words covered by a repeat of an earlier n-gram (dup_ns[k]),
      each word counted once.
    """
    n_docs = len(doc_starts) - 1
    max_n = 0
    for n in top_ns:
        max_n = max(max_n, n)
    for n in dup_ns:
        max_n = max(max_n, n)
    for d in range(n_docs):
        lo, hi = doc_starts[d], doc_starts[d + 1]
        size = hi - lo
        if size == 0:
            continue
        cap = 16
        while cap < 2 * size:
            cap *= 2
        mask = cap - 1
        keys = np.empty(cap, np.uint64)
        used = np.zeros(cap, np.bool_)
        count = np.zeros(cap, np.int64)
        first = np.zeros(cap, np.int64)
        cum = np.zeros(size + 1, np.int64)
        for i in range(size):
            cum[i + 1] = cum[i] + token_len[lo + i]
        h = np.zeros(size, np.uint64)
        covered = np.zeros(size + 1, np.int64)
        for n in range(1, max_n + 1):
            m = size - n + 1
            if m <= 0:
                break
            for i in range(m):
                h[i] = h[i] * MULT + codes[lo + i + n - 1]
            want_top = -1
            for k in range(len(top_ns)):
                if top_ns[k] == n:
                    want_top = k
            want_dup = -1
            for k in range(len(dup_ns)):
                if dup_ns[k] == n:
                    want_dup = k
            if want_top < 0 and want_dup < 0:
                continue
            used[:] = False
            covered[:] = 0
            for i in range(m):
                key = h[i]
                slot = np.int64((key ^ (key >> np.uint64(29))) & np.uint64(mask))
                while used[slot] and keys[slot] != key:
                    slot = (slot + 1) & mask
                if used[slot]:
                    count[slot] += 1
                    covered[i] += 1  # a repeat: words i .. i+n-1 are covered
                    covered[i + n] -= 1
                else:
                    used[slot] = True
                    keys[slot] = key
                    count[slot] = 1
                    first[slot] = i
            if want_top >= 0:
                best_count, best_first = 0, 0
                for slot in range(cap):
                    if used[slot] and (count[slot] > best_count or
                                       (count[slot] == best_count and first[slot] < best_first)):
                        best_count, best_first = count[slot], first[slot]
                chars = cum[best_first + n] - cum[best_first] + (n - 1)
                top_out[want_top, d] = chars * best_count
            if want_dup >= 0:
                run, total = 0, 0
                for i in range(size):
                    run += covered[i]
                    if run > 0:
                        total += token_len[lo + i]
                dup_out[want_dup, d] = total
