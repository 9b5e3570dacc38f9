"""Compiled per-document counts of the line, paragraph and character signals (Gopher, Gopher repetition,
FineWeb), in one pass over each document's UTF-8 bytes.

Each count is defined in `textsignals`/`quality`/`repetition` by Arrow splits and RE2 patterns (the
`*_by_patterns` functions keep those definitions and the tests compare the two); here they are read
off the bytes directly:

- lines: pieces between newlines (every "\\n", empty pieces included), as `split_pattern("\\n")` cuts;
- line runs and paragraphs: pieces between runs of one or more / two or more newlines, paragraphs in
  the text trimmed of Arrow's whitespace, as `split_pattern_regex` cuts;
- a piece is a duplicate when an identical piece came earlier in the same document (compared byte for
  byte, found through a hash table);
- RE2's `\\s` is ASCII (`[\\t\\n\\f\\r ]`), so "blank" and the line-end patterns use only those.
"""

from __future__ import annotations

import numpy as np

from llm.compiled import njit_cached
from llm.data.text_classes import ARROW_SPACE, RE2_SPACE, TERMINAL
from llm.data.word_kernels import _code_point, _same_bytes

# Columns of `text_counts`'s result, one row per document.
COUNTS = (
    "chars", "newlines", "hashes", "ellipses",  # code points; "\n"; "#"; "..." (non-overlapping) and "…"
    "lines", "bullet_lines", "ellipsis_lines",  # lines, those starting with • or - , those ending in an ellipsis
    "nonblank_lines", "terminal_lines", "short_lines", "dup_nonblank_chars",  # FineWeb's lines (blank ones left out)
    "line_runs", "dup_line_runs", "dup_line_run_chars",  # Gopher repetition: pieces between runs of newlines
    "paras", "dup_paras", "dup_para_chars",  # and between runs of two or more, in the trimmed text
)
_C = {name: k for k, name in enumerate(COUNTS)}
CHARS, NEWLINES, HASHES, ELLIPSES = _C["chars"], _C["newlines"], _C["hashes"], _C["ellipses"]
LINES, BULLET_LINES, ELLIPSIS_LINES = _C["lines"], _C["bullet_lines"], _C["ellipsis_lines"]
NONBLANK, TERMINAL_LINES, SHORT_LINES, DUP_NONBLANK_CHARS = (_C["nonblank_lines"], _C["terminal_lines"],
                                                              _C["short_lines"], _C["dup_nonblank_chars"])
LINE_RUNS, DUP_LINE_RUNS, DUP_LINE_RUN_CHARS = _C["line_runs"], _C["dup_line_runs"], _C["dup_line_run_chars"]
PARAS, DUP_PARAS, DUP_PARA_CHARS = _C["paras"], _C["dup_paras"], _C["dup_para_chars"]

_BASE = np.uint64(0x100000001B3)  # odd multiplier of the rolling piece hash


@njit_cached(nogil=True)
def duplicate_pieces(data, prefix, powers, base, lo, hi, dup):  # pragma: no cover (compiled)
    """dup[k] = piece k (bytes lo[k]:hi[k] of data, a document starting at byte `base`) is identical to
    an earlier piece. A piece's hash comes from the document's prefix hashes in O(1)
    (`prefix[j]`: hash of its first j bytes); equal hashes are compared byte for byte."""
    m = lo.shape[0]
    cap = 16
    while cap < 2 * m:
        cap *= 2
    mask = np.uint64(cap - 1)
    slot_of = np.full(cap, -1, np.int64)
    for k in range(m):
        dup[k] = False
        a, b = lo[k] - base, hi[k] - base
        h = prefix[b] - prefix[a] * powers[b - a]
        s = np.int64((h ^ (h >> np.uint64(29))) & mask)
        while True:
            j = slot_of[s]
            if j < 0:
                slot_of[s] = k
                break
            if _same_bytes(data, lo[j], hi[j], data, lo[k], hi[k]):
                dup[k] = True
                break
            s = (s + 1) & (cap - 1)


@njit_cached(nogil=True)
def text_counts(data, offsets, classes, short_line_chars, repetition=True):  # pragma: no cover (compiled)
    """The `COUNTS` of each document (`data[offsets[d]:offsets[d + 1]]`), an int64 row per document;
    without `repetition` the line runs and paragraphs (and their duplicates) are skipped."""
    docs = offsets.shape[0] - 1
    out = np.zeros((docs, len(COUNTS)), np.int64)
    longest = 1
    for d in range(docs):
        longest = max(longest, offsets[d + 1] - offsets[d] + 1)
    cps = np.empty(longest, np.int64)  # the document's code points
    at = np.empty(longest, np.int64)  # byte position of each code point (and of the end)
    newline = np.empty(longest, np.int64)  # code point index of each "\n"
    prefix = np.empty(longest, np.uint64)
    powers = np.empty(longest, np.uint64)
    powers[0] = 1
    for k in range(1, longest):
        powers[k] = powers[k - 1] * _BASE
    lo = np.empty(longest, np.int64)
    hi = np.empty(longest, np.int64)
    dup = np.empty(longest, np.bool_)
    for d in range(docs):
        start, stop = offsets[d], offsets[d + 1]
        row = out[d]
        i, n, lines, dots = start, 0, 0, 0
        h = np.uint64(0)
        prefix[0] = h
        while i < stop:
            cp, width = _code_point(data, i, stop)
            for k in range(width):
                h = h * _BASE + np.uint64(data[i + k])
                prefix[i - start + k + 1] = h
            cps[n] = cp
            at[n] = i
            if cp == 0x0A:
                newline[lines] = n
                lines += 1
            elif cp == 0x23:
                row[HASHES] += 1
            elif cp == 0x2026:
                row[ELLIPSES] += 1
            if cp == 0x2E:
                dots += 1
            elif dots:
                row[ELLIPSES] += dots // 3
                dots = 0
            n += 1
            i += width
        row[ELLIPSES] += dots // 3
        at[n] = stop
        row[CHARS] = n
        row[NEWLINES] = lines

        # Lines (every "\n"): Gopher's bullet and ellipsis lines, FineWeb's non-blank lines.
        m = 0
        first = 0
        for j in range(lines + 1):
            last = newline[j] if j < lines else n
            f = first
            while f < last and classes[cps[f]] & RE2_SPACE:
                f += 1
            blank = f == last
            if not blank and (cps[f] == 0x2022 or cps[f] == 0x2D):
                row[BULLET_LINES] += 1
            e = last
            while e > first and classes[cps[e - 1]] & RE2_SPACE:
                e -= 1
            if (e - first >= 1 and cps[e - 1] == 0x2026) or (e - first >= 3 and cps[e - 1] == 0x2E
                                                            and cps[e - 2] == 0x2E and cps[e - 3] == 0x2E):
                row[ELLIPSIS_LINES] += 1
            if not blank:
                row[NONBLANK] += 1
                if classes[cps[last - 1]] & TERMINAL:
                    row[TERMINAL_LINES] += 1
                if last - first <= short_line_chars:
                    row[SHORT_LINES] += 1
                lo[m], hi[m] = first, last  # FineWeb's duplicate lines: among the non-blank ones
                m += 1
            first = last + 1
        row[LINES] = lines + 1
        _add_duplicates(data, prefix, powers, start, at, lo, hi, dup, m, row, -1, -1, DUP_NONBLANK_CHARS)
        if not repetition:
            continue

        # Line runs: pieces between maximal runs of newlines (empty first/last pieces included).
        m = _pieces(newline, 0, lines, 0, n, 1, lo, hi)
        _add_duplicates(data, prefix, powers, start, at, lo, hi, dup, m, row, LINE_RUNS, DUP_LINE_RUNS,
                        DUP_LINE_RUN_CHARS)

        # Paragraphs: the text trimmed of Arrow whitespace, cut at runs of two or more newlines.
        f, e = 0, n
        while f < e and classes[cps[f]] & ARROW_SPACE:
            f += 1
        while e > f and classes[cps[e - 1]] & ARROW_SPACE:
            e -= 1
        j0 = 0
        while j0 < lines and newline[j0] < f:
            j0 += 1
        j1 = j0
        while j1 < lines and newline[j1] < e:
            j1 += 1
        m = _pieces(newline, j0, j1, f, e, 2, lo, hi)
        _add_duplicates(data, prefix, powers, start, at, lo, hi, dup, m, row, PARAS, DUP_PARAS, DUP_PARA_CHARS)
    return out


@njit_cached(inline="always")
def _pieces(newline, j0, j1, f, e, min_run, lo, hi):
    """Pieces of code points f:e between runs of at least `min_run` consecutive newlines (newline[j0:j1],
    all inside f:e), as code point ranges in lo/hi; returns their number."""
    m = 0
    a = f
    j = j0
    while j < j1:
        r = j
        while r + 1 < j1 and newline[r + 1] == newline[r] + 1:
            r += 1
        if r - j + 1 >= min_run:
            lo[m], hi[m] = a, newline[j]
            m += 1
            a = newline[r] + 1
        j = r + 1
    lo[m], hi[m] = a, e
    return m + 1


@njit_cached(inline="always")
def _add_duplicates(data, prefix, powers, start, at, lo, hi, dup, m, row, n_col, dup_col, chars_col):
    """Count the duplicates among pieces lo[:m]:hi[:m] (code point ranges) into the row's columns."""
    b_lo = np.empty(m, np.int64)
    b_hi = np.empty(m, np.int64)
    for k in range(m):
        b_lo[k], b_hi[k] = at[lo[k]], at[hi[k]]
    duplicate_pieces(data, prefix, powers, start, b_lo, b_hi, dup[:m])
    if n_col >= 0:
        row[n_col] = m
    for k in range(m):
        if dup[k]:
            if dup_col >= 0:
                row[dup_col] += 1
            row[chars_col] += hi[k] - lo[k]
