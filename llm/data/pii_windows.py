"""Where in a text an IP address can be: the few stretches the Python pattern then searches.

An address (IPv4 `\\b(?:\\d{1,3}\\.){3}\\d{1,3}\\b`, IPv6 `(?:[0-9A-Fa-f]{0,4}:){2,7}...(?:%\\w+)?`) holds
only word characters, `.`, `:` and `%`, so every match lies inside one maximal run of characters that
are not an ASCII character outside that set (non-ASCII characters stay in: Python's `\\w` and `\\d`
take Unicode letters and digits). A run can hold one only with three dots or two colons in it. Searching
just those runs (with `pos`/`endpos`, so `\\b` still sees the real text before a run; the character after
it is a separator either way) finds exactly the matches a search of the whole text finds, in a small
fraction of the time: the IPv6 alternative can start anywhere, which makes a whole-text search of a
long page cost milliseconds. The runs are found with a few numpy passes over the UTF-8 bytes.
"""

from __future__ import annotations

import numpy as np

# Bytes that end a run: ASCII other than letters, digits, "_", ".", ":" and "%" (UTF-8 bytes of
# non-ASCII characters, 0x80 and up, never do).
_SEPARATOR = np.array([b < 0x80 and not (chr(b).isalnum() or chr(b) in "_.:%") for b in range(256)], np.bool_)


def ip_windows(texts) -> dict[int, list[tuple[int, int]]]:
    """For each text (an Arrow string array) that can hold an IP address, its (start, end) character
    ranges that can."""
    from llm.data.textsignals import utf8_buffers

    data, offsets = utf8_buffers(texts)
    offsets = offsets.astype(np.int64)
    data = data[offsets[0]:offsets[-1]]
    offsets = offsets - offsets[0]
    if not len(data):
        return {}
    inside = ~_SEPARATOR[data]
    edges = np.diff(np.r_[False, inside, False].view(np.int8))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # runs, ends exclusive
    # A run may not cross from one document into the next: cut runs at the documents' starts.
    inner = offsets[1:-1]
    cut = inner[inside[inner] & inside[inner - 1]] if len(inner) else inner
    if len(cut):
        at = np.searchsorted(starts, cut)
        starts, ends = np.insert(starts, at, cut), np.insert(ends, at - 1, cut)
    # Dots and colons per run: the separators between runs hold none, so a sum from one run's start
    # to the next's is the run's.
    if not len(starts):
        return {}
    keep = ((np.add.reduceat(data == 0x2E, starts, dtype=np.int32) >= 3)
            | (np.add.reduceat(data == 0x3A, starts, dtype=np.int32) >= 2))
    starts, ends = starts[keep], ends[keep]
    if not len(starts):
        return {}
    doc = np.searchsorted(offsets, starts, side="right") - 1
    # Code points before a byte: the byte position less the continuation bytes before it, counted
    # only up to the few positions asked for.
    asked = np.unique(np.r_[offsets[doc], starts, ends])
    continuation = np.r_[(data & 0xC0) == 0x80, False]
    bounds = asked if asked[0] == 0 else np.r_[0, asked]  # ascending from 0, as reduceat cuts
    per_piece = np.add.reduceat(continuation, bounds, dtype=np.int64)
    before = np.r_[0, np.cumsum(per_piece)[:-1]]  # continuation bytes before each bound
    chars_at = asked - (before if asked[0] == 0 else before[1:])

    def chars(positions):
        return chars_at[np.searchsorted(asked, positions)]

    first = chars(offsets[doc])
    starts_c, ends_c = chars(starts) - first, chars(ends) - first
    out: dict[int, list[tuple[int, int]]] = {}
    for d, a, b in zip(doc.tolist(), starts_c.tolist(), ends_c.tolist()):
        out.setdefault(d, []).append((a, b))
    return out
