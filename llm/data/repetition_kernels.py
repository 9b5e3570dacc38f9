"""Compiled n-gram loops of the Gopher repetition signals: one hash table per document and n.

Tokens arrive as one batch (document index, token code, token length per token, documents in order).
Every n-gram is the 64-bit polynomial hash of its token codes, extended by one token per n. A table
sized to twice the document's n-grams (open addressing) counts them; sorting the whole batch's n-grams,
as a vectorised version must, costs several times more.

Only n-grams that can repeat are counted: an (n+1)-gram occurs twice only where its first n tokens do,
so after the pass for n, the pass for n + 1 visits just the positions whose n-gram occurs more than
once in the document. Every other (n+1)-gram occurs once: it is never a repeat, and it is the most
frequent one only when nothing repeats, and then the earliest (position 0) wins the tie. In prose a
few percent of positions are left by n = 5, so the ten passes cost about two.
"""

from __future__ import annotations

import numpy as np

from llm.compiled import njit_cached

MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio): spreads codes over the word
KEY, STAMP, COUNT, FIRST = 0, 1, 2, 3  # columns of a table slot


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
    largest = 1
    for d in range(n_docs):
        largest = max(largest, doc_starts[d + 1] - doc_starts[d])
    # One set of tables for the whole batch, sized for its largest document; a slot is in use when its
    # stamp is the current (document, n) pass, so nothing is cleared between passes.
    cap = 16
    while cap < 2 * largest:
        cap *= 2
    # A slot's key, stamp, count and first position side by side: a probe touches one cache line
    # (a large document's table does not fit in cache).
    table = np.zeros((cap, 4), np.int64)
    table[:, STAMP] = -1
    cum = np.empty(largest + 1, np.int64)
    h = np.empty(largest, np.uint64)
    covered = np.empty(largest + 1, np.int64)
    live = np.empty(largest, np.int64)  # positions whose n-gram can still repeat, ascending
    slot_of = np.empty(largest, np.int64)  # each live position's table slot in this pass
    epoch = 0
    for d in range(n_docs):
        lo, hi = doc_starts[d], doc_starts[d + 1]
        size = hi - lo
        if size == 0:
            continue
        doc_cap = 16
        while doc_cap < 2 * size:
            doc_cap *= 2
        mask = doc_cap - 1
        cum[0] = 0
        for i in range(size):
            cum[i + 1] = cum[i] + token_len[lo + i]
            h[i] = codes[lo + i]  # the 1-grams
            live[i] = i
        n_live = size
        for n in range(1, max_n + 1):
            m = size - n + 1
            if m <= 0:
                break
            if n > 1:  # extend the live positions' hashes by one token; those with no n-gram drop out
                kept = 0
                for x in range(n_live):
                    i = live[x]
                    if i < m:
                        h[i] = h[i] * MULT + codes[lo + i + n - 1]
                        live[kept] = i
                        kept += 1
                n_live = kept
            want_top = -1
            for k in range(len(top_ns)):
                if top_ns[k] == n:
                    want_top = k
            want_dup = -1
            for k in range(len(dup_ns)):
                if dup_ns[k] == n:
                    want_dup = k
            if want_top < 0 and want_dup < 0 and n < 2:
                continue  # nothing asked of 1-grams: every position stays live
            epoch += 1
            if want_dup >= 0:
                covered[:size + 1] = 0
            best_count, best_first = 1, 0  # with no repeat: every n-gram once, the earliest wins
            for x in range(n_live):
                i = live[x]
                key = h[i]
                signed = np.int64(key)  # the same 64 bits, stored in the int64 table
                slot = np.int64((key ^ (key >> np.uint64(29))) & np.uint64(mask))
                while table[slot, STAMP] == epoch and table[slot, KEY] != signed:
                    slot = (slot + 1) & mask
                if table[slot, STAMP] == epoch:
                    c = table[slot, COUNT] + 1
                    table[slot, COUNT] = c
                    covered[i] += 1  # a repeat: words i .. i+n-1 are covered
                    covered[i + n] -= 1
                    # The most frequent n-gram so far, the earliest on ties: counts only grow, so the
                    # last one standing is the one a scan of the finished table would pick.
                    if c > best_count or (c == best_count and table[slot, FIRST] < best_first):
                        best_count, best_first = c, table[slot, FIRST]
                else:
                    table[slot, STAMP] = epoch
                    table[slot, KEY] = signed
                    table[slot, COUNT] = 1
                    table[slot, FIRST] = i
                slot_of[x] = slot
            if want_top >= 0:
                chars = cum[best_first + n] - cum[best_first] + (n - 1)
                top_out[want_top, d] = chars * best_count
            if want_dup >= 0:
                run, total = 0, 0
                for i in range(size):
                    run += covered[i]
                    if run > 0:
                        total += token_len[lo + i]
                dup_out[want_dup, d] = total
            # Only n-grams that occur more than once can start a repeated (n+1)-gram.
            kept = 0
            for x in range(n_live):
                if table[slot_of[x], COUNT] > 1:
                    live[kept] = live[x]
                    kept += 1
            n_live = kept
    return top_out, dup_out
