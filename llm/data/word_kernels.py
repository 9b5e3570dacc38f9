"""Compiled word tokenizer of the quality signals: the tokens `textsignals.words` defines, found in one
pass over each document's UTF-8 bytes instead of two RE2 rewrites of the whole batch and a split.

The definition (kept in `textsignals`) is: split punctuation and symbols off the start of a
whitespace token (`(^|\\s)(P+)(\\S)` -> `\\1\\2 \\3`), then off its end (`(\\S)(P+)(\\s|$)` -> `\\1 \\2\\3`), then
split at Arrow's Unicode whitespace. Both rewrites only insert spaces, so every token is a substring of
the original text; the loops below mark where each rewrite would insert one, replaying RE2's
leftmost, greedy matching, including its corners: RE2's `\\s` is ASCII (a no-break space is `\\S` to it
but whitespace to the split), a run of punctuation alone gives up its last character to the leading
rule's `\\S`, so "..." becomes ".", ".", ".".
"""

from __future__ import annotations

import numpy as np

from llm.compiled import njit_cached
from llm.data.text_classes import ARROW_SPACE, CONTROL, LETTER, PUNCT_SYMBOL, RE2_SPACE

IS_WORD = 1  # the token holds a character that is not punctuation, a symbol or a control character
HAS_LETTER = 2  # the token holds a letter


@njit_cached(inline="always")
def _code_point(data, i, stop):
    """(code point, width) of the UTF-8 sequence at data[i]; U+FFFD and width 1 for a malformed or
    truncated one (Arrow validates strings, so only foreign buffers have them)."""
    b0 = np.int64(data[i])
    if b0 < 0x80:
        return b0, 1
    width = 2 if b0 < 0xE0 else 3 if b0 < 0xF0 else 4
    if b0 < 0xC0 or i + width > stop:
        return np.int64(0xFFFD), 1
    cp = b0 & (0x1F if width == 2 else 0x0F if width == 3 else 0x07)
    for k in range(1, width):
        cp = (cp << 6) | (np.int64(data[i + k]) & 0x3F)
    return (cp, width) if cp < 0x110000 else (np.int64(0xFFFD), width)


_FNV_PRIME = np.uint64(0x100000001B3)
_FNV_BASIS = np.uint64(0xCBF29CE484222325)
_MIX = np.uint64(0xBF58476D1CE4E5B9)


@njit_cached(inline="always")
def byte_hash(data, lo, hi):
    """64-bit hash of data[lo:hi]: FNV-1a, then a multiply-xorshift so the low bits mix too."""
    h = _FNV_BASIS
    for i in range(lo, hi):
        h = (h ^ np.uint64(data[i])) * _FNV_PRIME
    h ^= h >> np.uint64(32)
    h *= _MIX
    return h ^ (h >> np.uint64(29))


@njit_cached(inline="always")
def _cut_run(cls, cut, q, i, n):
    """Where the two rewrites insert spaces around the run of punctuation cls[q:i] (n: characters known
    so far; i == n at the end of the text).

    The leading rule: a run at the text's start or after an RE2 space takes the next character as its
    \\S, or, with none to take, gives up its own last one (greedy P+ backs off). The trailing rule then
    sees the run, or the two pieces that cut made of it: a piece ending at an RE2 space (inserted ones
    included) or the end is split from a \\S before it, or keeps its first character as that \\S when a
    space comes before it."""
    k = i - q
    after_space = q == 0 or cls[q - 1] & RE2_SPACE
    space_next = i == n or cls[i] & RE2_SPACE
    if after_space and i < n and not space_next:
        cut[i] = 1
        space_next = True  # the inserted space
    elif after_space and k >= 2:
        cut[i - 1] = 1  # pieces [q, i - 1) and [i - 1, i); the second is one character
        if k - 1 >= 2:
            cut[q + 1] = 2
        return
    if space_next:
        if not after_space:
            cut[q] = 2
        elif k >= 2:
            cut[q + 1] = 2


@njit_cached(nogil=True)
def word_tokens(data, offsets, classes, emit=True):  # pragma: no cover (compiled; tested through textsignals.words)
    """Word tokens of documents given as UTF-8 bytes (`data[offsets[d]:offsets[d + 1]]`).

    Returns (parent, starts, ends, lengths, flags, hashes): per token its document, its byte range in
    `data`, its length in code points, its `IS_WORD` / `HAS_LETTER` flags and the 64-bit hash of its
    bytes (`byte_hash`). With `emit` False only `parent` holds anything: the number of tokens of each
    document (for a caller that needs just that)."""
    docs = offsets.shape[0] - 1
    most = offsets[docs] - offsets[0] if emit else docs  # a token has at least one byte (pages are touched only as used)
    parent = np.empty(most, np.int64)
    starts = np.empty(most, np.int64)
    ends = np.empty(most, np.int64)
    lengths = np.empty(most, np.int64)
    flags = np.empty(most, np.uint8)
    hashes = np.empty(most, np.uint64)
    if not emit:
        parent[:] = 0
    longest = 0
    for d in range(docs):
        longest = max(longest, offsets[d + 1] - offsets[d])
    cls = np.empty(longest + 1, np.uint8)
    pos = np.empty(longest + 1, np.int64)
    cut = np.zeros(longest + 1, np.uint8)  # a rewrite inserts a space before character i
    t = 0
    for d in range(docs):
        i, stop = offsets[d], offsets[d + 1]
        # Decode, and settle each run of punctuation as soon as the character after it is known.
        n, q = 0, -1  # q: where the open run of punctuation started (-1: none open)
        while i < stop:
            cp, width = _code_point(data, i, stop)
            c = classes[cp]
            cls[n] = c
            pos[n] = i
            cut[n] = 0
            if c & PUNCT_SYMBOL:
                if q < 0:
                    q = n
            elif q >= 0:
                _cut_run(cls, cut, q, n, n + 1)
                q = -1
            n += 1
            i += width
        pos[n] = stop
        cut[n] = 0
        if q >= 0:
            _cut_run(cls, cut, q, n, n)
        # Tokens: runs of non-whitespace characters, cut where a rewrite inserted a space.
        i = 0
        while i < n:
            if cls[i] & ARROW_SPACE:
                i += 1
                continue
            first = i
            f = 0
            while True:
                c = cls[i]
                if not c & (PUNCT_SYMBOL | CONTROL):
                    f |= IS_WORD
                if c & LETTER:
                    f |= HAS_LETTER
                i += 1
                if i >= n or cls[i] & ARROW_SPACE or cut[i]:
                    break
            if not emit:
                parent[d] += 1
                continue
            parent[t] = d
            starts[t] = pos[first]
            ends[t] = pos[i]
            lengths[t] = i - first
            flags[t] = f
            hashes[t] = byte_hash(data, pos[first], pos[i])
            t += 1
    if not emit:
        t = docs
    return parent[:t], starts[:t], ends[:t], lengths[:t], flags[:t], hashes[:t]


@njit_cached(nogil=True)
def gather(data, starts, ends):  # pragma: no cover (compiled)
    """The byte ranges concatenated, and their int64 offsets: the buffers of a string array."""
    out_offsets = np.empty(starts.shape[0] + 1, np.int64)
    out_offsets[0] = 0
    for k in range(starts.shape[0]):
        out_offsets[k + 1] = out_offsets[k] + ends[k] - starts[k]
    out = np.empty(out_offsets[-1], np.uint8)
    for k in range(starts.shape[0]):
        out[out_offsets[k]:out_offsets[k + 1]] = data[starts[k]:ends[k]]
    return out, out_offsets


@njit_cached(nogil=True)
def hash_table(data, starts, ends):  # pragma: no cover (compiled)
    """An open-addressing table of the byte strings data[starts[k]:ends[k]]: (slots, hashes), where
    slots[s] is the index of the first string with that content, or -1; for `lookup`."""
    m = starts.shape[0]
    cap = 16
    while cap < 2 * m:
        cap *= 2
    slots = np.full(cap, -1, np.int64)
    hashes = np.empty(m, np.uint64)
    for k in range(m):
        h = byte_hash(data, starts[k], ends[k])
        hashes[k] = h
        s = np.int64(h & np.uint64(cap - 1))
        while slots[s] >= 0:
            j = slots[s]
            if hashes[j] == h and _same_bytes(data, starts[j], ends[j], data, starts[k], ends[k]):
                break
            s = (s + 1) & (cap - 1)
        if slots[s] < 0:
            slots[s] = k
    return slots, hashes


@njit_cached(inline="always")
def _same_bytes(a, a_lo, a_hi, b, b_lo, b_hi):
    if a_hi - a_lo != b_hi - b_lo:
        return False
    for k in range(a_hi - a_lo):
        if a[a_lo + k] != b[b_lo + k]:
            return False
    return True


@njit_cached(nogil=True)
def lookup(data, starts, ends, hashes, table_data, table_starts, table_ends, slots, table_hashes):  # pragma: no cover
    """Per token (bytes data[starts[k]:ends[k]], hash hashes[k]): the index of the identical string in
    the `hash_table` (slots, table_hashes) of table_data's strings, or -1. Exact: equal hashes are
    compared byte for byte."""
    out = np.full(starts.shape[0], -1, np.int64)
    mask = slots.shape[0] - 1
    for k in range(starts.shape[0]):
        h = hashes[k]
        s = np.int64(h & np.uint64(mask))
        while slots[s] >= 0:
            j = slots[s]
            if table_hashes[j] == h and _same_bytes(table_data, table_starts[j], table_ends[j], data, starts[k], ends[k]):
                out[k] = j
                break
            s = (s + 1) & mask
    return out


@njit_cached(nogil=True)
def token_totals(parent, lengths, flags, stop_idx, n_docs, n_stop):  # pragma: no cover (compiled)
    """Per document, in one pass over the tokens: (tokens, words, code points of words, tokens with a
    letter, distinct stop words), as int64 columns. `stop_idx`: each token's stop-word index or -1."""
    out = np.zeros((n_docs, 5), np.int64)
    seen = np.full(max(n_stop, 1), -1, np.int64)  # the last document each stop word was counted for
    for k in range(parent.shape[0]):
        d = parent[k]
        row = out[d]
        row[0] += 1
        if flags[k] & IS_WORD:
            row[1] += 1
            row[2] += lengths[k]
        if flags[k] & HAS_LETTER:
            row[3] += 1
        j = stop_idx[k]
        if j >= 0 and seen[j] != d:  # tokens come in document order
            seen[j] = d
            row[4] += 1
    return out
