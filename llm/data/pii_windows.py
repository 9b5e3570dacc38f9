"""Where in a text an IP address can be: the few stretches the Python pattern then searches.

An address (IPv4 `\\b(?:\\d{1,3}\\.){3}\\d{1,3}\\b`, IPv6 `(?:[0-9A-Fa-f]{0,4}:){2,7}...(?:%\\w+)?`) holds
only word characters, `.`, `:` and `%`, so every match lies inside one maximal run of characters that
are not an ASCII character outside that set (non-ASCII characters stay in: Python's `\\w` and `\\d`
take Unicode letters and digits). A run can hold one only with three dots or two colons in it. Searching
just those runs (with `pos`/`endpos`, so `\\b` still sees the real text before a run; the character after
it is a separator either way) finds exactly the matches a search of the whole text finds, in a small
fraction of the time: the IPv6 alternative can start anywhere, which makes a whole-text search of a
long page cost milliseconds.
"""

from __future__ import annotations

import numpy as np

from llm.compiled import njit_cached

# ASCII bytes that end a run: everything but letters, digits, "_", ".", ":" and "%".
_SEPARATOR = np.array([not (chr(b).isalnum() or chr(b) in "_.:%") for b in range(128)], np.bool_)


@njit_cached(nogil=True)
def _windows(data, offsets, separator):  # pragma: no cover (compiled; tested through the scrubber)
    """(doc, starts, ends): the runs with three dots or two colons of each document
    data[offsets[d]:offsets[d + 1]] (UTF-8), in code points from the document's start."""
    n = offsets[-1] - offsets[0]
    docs = np.empty(n // 7 + 1, np.int64)
    starts = np.empty(n // 7 + 1, np.int64)
    ends = np.empty(n // 7 + 1, np.int64)
    w = 0
    for d in range(offsets.shape[0] - 1):
        i, stop = offsets[d], offsets[d + 1]
        chars = 0  # code points of the document before byte i
        while i < stop:
            b = data[i]
            if b < 0x80 and separator[b]:
                i += 1
                chars += 1
                continue
            first = chars
            dots = colons = 0
            while i < stop and not (data[i] < 0x80 and separator[data[i]]):
                b = data[i]
                if b == 0x2E:
                    dots += 1
                elif b == 0x3A:
                    colons += 1
                if (b & 0xC0) != 0x80:  # a lead byte starts a code point
                    chars += 1
                i += 1
            if dots >= 3 or colons >= 2:
                docs[w], starts[w], ends[w] = d, first, chars
                w += 1
    return docs[:w], starts[:w], ends[:w]


def ip_windows(texts) -> dict[int, list[tuple[int, int]]]:
    """For each text (an Arrow string array) that can hold an IP address, its (start, end) character
    ranges that can."""
    from llm.data.textsignals import utf8_buffers

    data, offsets = utf8_buffers(texts)
    docs, starts, ends = _windows(data, offsets.astype(np.int64), _SEPARATOR)
    out: dict[int, list[tuple[int, int]]] = {}
    for d, a, b in zip(docs.tolist(), starts.tolist(), ends.tolist()):
        out.setdefault(d, []).append((a, b))
    return out
