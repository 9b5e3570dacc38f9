"""Compiled C4 line rules: per line of each document, whether it counts, its sentences, the lorem-ipsum
and curly-bracket marks, and the document rewritten to its counted lines, in one pass over the bytes.

The rules' definition is `signal_patterns.c4_by_patterns` (Arrow splits and RE2 patterns); this replays
it character by character:

- a line is a piece between newlines, trimmed of Arrow's Unicode whitespace; its words are the pieces
  between runs of that whitespace (an empty line has one empty word, as Arrow's split gives);
- wiki citations (`[12]`, `[]`, `[edit]`, `[citation needed]`) are removed, leftmost first, no rescan;
- "lorem ipsum", "javascript" and the policy phrases are found in the lower-cased line (Arrow's per
  code point lower case: only ASCII capitals, U+0130 and the Kelvin sign lower to ASCII);
- a sentence ends at a run of `. ? ! …`, then closing quotes or brackets, then an ASCII space or the
  line's end (RE2's `\\s` is ASCII).
"""

from __future__ import annotations

import numpy as np

from llm.compiled import njit_cached
from llm.data.text_classes import ARROW_SPACE, RE2_SPACE
from llm.data.word_kernels import _code_point

# Columns of `c4_lines`' per-document result.
SENTENCES, COUNTED, LOREM, CURLY, REMOVED = range(5)
_CITE_EDIT = np.array([ord(c) for c in "[edit]"], np.int64)
_CITE_NEEDED = np.array([ord(c) for c in "[citation needed]"], np.int64)
# Lines about these do not count (`policy_lines`), matched in the lower-cased line.
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


def needle_table() -> tuple[np.ndarray, np.ndarray]:
    """"lorem ipsum", "javascript" and the policy phrases as code points, and the offsets cutting them."""
    phrases = ("lorem ipsum", "javascript") + POLICY_PHRASES
    return (np.array([ord(c) for p in phrases for c in p], np.int64),
            np.cumsum([0] + [len(p) for p in phrases]).astype(np.int64))


@njit_cached(inline="always")
def _ascii_lower(c):
    if 0x41 <= c <= 0x5A:
        return c + 32
    if c == 0x130:
        return np.int64(0x69)
    if c == 0x212A:
        return np.int64(0x6B)
    return c


@njit_cached(inline="always")
def _literal_at(cps, i, e, lit):
    if e - i < lit.shape[0]:
        return False
    for k in range(lit.shape[0]):
        if cps[i + k] != lit[k]:
            return False
    return True


@njit_cached(inline="always")
def _find_phrases(clean, m, needles, needle_offsets, starting, found):
    """found[p] = the lower-cased line clean[:m] holds phrase p. One pass; `starting[c1 * 128 + c2]` is
    the bit mask of the phrases whose first two characters are c1 c2 (ASCII), so most positions cost
    one lookup."""
    found[:] = False
    for i in range(m - 1):
        c1 = _ascii_lower(clean[i])
        if c1 >= 0x80:
            continue
        c2 = _ascii_lower(clean[i + 1])
        if c2 >= 0x80:
            continue
        bits = starting[c1 * 128 + c2]
        if bits == 0:
            continue
        for p in range(found.shape[0]):
            if not (bits >> p) & 1 or found[p]:
                continue
            lo, hi = needle_offsets[p], needle_offsets[p + 1]
            if m - i < hi - lo:
                continue
            k = 2
            while k < hi - lo and _ascii_lower(clean[i + k]) == needles[lo + k]:
                k += 1
            found[p] = k == hi - lo


@njit_cached(inline="always")
def _is_end(c):
    return c == 0x2E or c == 0x3F or c == 0x21 or c == 0x2026


@njit_cached(inline="always")
def _is_closer(c):
    return c == 0x22 or c == 0x27 or c == 0x201D or c == 0x2019 or c == 0x29 or c == 0x5D


@njit_cached(nogil=True)
def c4_lines(data, offsets, classes, max_word_length, min_words, terminal_punct, javascript, policy,
             needles, needle_offsets):  # pragma: no cover (compiled; tested against c4_by_patterns)
    """Per document (`data[offsets[d]:offsets[d + 1]]`): the int64 row (sentences in counted lines,
    counted lines, counted lines with lorem ipsum, counted lines with `{`, non-blank lines removed), and
    the text rewritten to its counted lines (citations removed, joined by newlines, trimmed), as UTF-8
    bytes and int64 offsets. `needles`: "lorem ipsum", "javascript", then the policy phrases, as code
    points cut by `needle_offsets`."""
    docs = offsets.shape[0] - 1
    out = np.zeros((docs, 5), np.int64)
    text = np.empty(offsets[docs] - offsets[0] + 1, np.uint8)
    text_offsets = np.zeros(docs + 1, np.int64)
    longest = 1
    for d in range(docs):
        longest = max(longest, offsets[d + 1] - offsets[d] + 1)
    cps = np.empty(longest, np.int64)
    at = np.empty(longest, np.int64)
    clean = np.empty(longest, np.int64)  # the line's code points, citations removed
    seg_lo = np.empty(longest, np.int64)  # and the byte ranges they come from
    seg_hi = np.empty(longest, np.int64)
    phrases = needle_offsets.shape[0] - 1
    found = np.zeros(phrases, np.bool_)
    starting = np.zeros(128 * 128, np.int64)
    for p in range(phrases):  # every phrase is at least two characters long
        starting[needles[needle_offsets[p]] * 128 + needles[needle_offsets[p] + 1]] |= 1 << p
    t = 0
    for d in range(docs):
        start, stop = offsets[d], offsets[d + 1]
        row = out[d]
        i, n = start, 0
        while i < stop:
            cp, width = _code_point(data, i, stop)
            cps[n] = cp
            at[n] = i
            n += 1
            i += width
        at[n] = stop
        t0 = t
        first = 0
        while first <= n:
            last = first
            while last < n and cps[last] != 0x0A:
                last += 1
            f, e = first, last
            while f < e and classes[cps[f]] & ARROW_SPACE:
                f += 1
            while e > f and classes[cps[e - 1]] & ARROW_SPACE:
                e -= 1
            # One pass over the trimmed line: its words (runs between Arrow whitespace, citations
            # included), and its characters with the citations taken out, leftmost first; what stays
            # is a few byte ranges of the line.
            words, longest_word, run, brace = 1, 0, 0, False
            m, segs, k, seg_start = 0, 0, f, f
            while k < e:
                c = cps[k]
                skip = 0
                if c == 0x5B:
                    q = k + 1
                    while q < e and 0x30 <= cps[q] <= 0x39:
                        q += 1
                    if q < e and cps[q] == 0x5D:
                        skip = q + 1 - k
                    elif _literal_at(cps, k, e, _CITE_EDIT):
                        skip = _CITE_EDIT.shape[0]
                    elif _literal_at(cps, k, e, _CITE_NEEDED):
                        skip = _CITE_NEEDED.shape[0]
                    if skip and k > seg_start:
                        seg_lo[segs], seg_hi[segs] = at[seg_start], at[k]
                        segs += 1
                for q in range(k, k + max(skip, 1)):
                    if classes[cps[q]] & ARROW_SPACE:
                        if run:
                            words += 1
                        run = 0
                    else:
                        run += 1
                        longest_word = max(longest_word, run)
                if skip:
                    k += skip
                    seg_start = k
                    continue
                brace |= c == 0x7B
                clean[m] = c
                m += 1
                k += 1
            if e > seg_start:
                seg_lo[segs], seg_hi[segs] = at[seg_start], at[e]
                segs += 1
            counted = longest_word <= max_word_length and words >= min_words
            if terminal_punct:
                c = clean[m - 1] if m else -1
                counted &= c == 0x2E or c == 0x3F or c == 0x21 or c == 0x22 or c == 0x27
                counted &= not (m >= 3 and c == 0x2E and clean[m - 2] == 0x2E and clean[m - 3] == 0x2E)
            if counted:  # every phrase rule reads only lines still counted
                _find_phrases(clean, m, needles, needle_offsets, starting, found)
            else:
                found[:] = False
            lorem = counted and found[0]
            if javascript:
                counted &= not found[1]
            curly = counted and brace
            if policy and counted:
                for p in range(2, phrases):
                    counted &= not found[p]
            row[LOREM] += lorem  # marked before the javascript and policy lines leave the count, as C4 does
            row[CURLY] += curly
            if counted:
                sentences = 0
                k = 0
                while k < m:
                    if not _is_end(clean[k]):
                        k += 1
                        continue
                    while k < m and _is_end(clean[k]):
                        k += 1
                    while k < m and _is_closer(clean[k]):
                        k += 1
                    if k == m or classes[clean[k]] & RE2_SPACE:
                        sentences += 1
                row[SENTENCES] += max(sentences, 1)
                row[COUNTED] += 1
                if row[COUNTED] > 1:
                    text[t] = 0x0A
                    t += 1
                for g in range(segs):
                    w = seg_hi[g] - seg_lo[g]
                    text[t:t + w] = data[seg_lo[g]:seg_hi[g]]
                    t += w
            elif e > f:
                row[REMOVED] += 1
            first = last + 1
        t = t0 + _trim(text, t0, t, classes)
        text_offsets[d + 1] = t
    return out, text[:t], text_offsets


@njit_cached(inline="always")
def _trim(text, lo, hi, classes):
    """Trim Arrow whitespace off both ends of text[lo:hi] in place (moved to start at lo); its new length."""
    a = lo
    while a < hi:
        cp, width = _code_point(text, a, hi)
        if not classes[cp] & ARROW_SPACE:
            break
        a += width
    b = hi
    while b > a:
        s = b - 1
        while s > a and (text[s] & 0xC0) == 0x80:
            s -= 1
        cp, width = _code_point(text, s, b)
        if not classes[cp] & ARROW_SPACE:
            break
        b = s
    if a > lo:
        for k in range(b - a):
            text[lo + k] = text[a + k]
    return b - a
