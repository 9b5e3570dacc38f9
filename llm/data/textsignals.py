"""Batch kernels for text signals: every document of a batch at once, nothing looping over documents
in Python.

The quality signals' hot paths are compiled single passes over the batch's UTF-8 bytes (`words`,
`word_counts`, `text_counts`; `c4_kernels` for C4's lines): about a fifth of the time of the Arrow
splits and RE2 passes that define them (`signal_patterns`), and equal to them value for value (tested).
`Pieces`, `split` and friends measure any split on flat Arrow arrays and fold the measures back to one
value per document with `numpy.bincount`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Punctuation and symbols are split off the start and end of whitespace tokens, the way rule-based
# word tokenizers do ("end." -> "end", "."), so punctuation counts as its own token in ratios.
_PUNCT = r"[\p{P}\p{S}]"
_LEADING = r"(^|\s)(" + _PUNCT + r"+)(\S)"
_TRAILING = r"(\S)(" + _PUNCT + r"+)(\s|$)"

# Unicode sentence terminals (the Sentence_Terminal property, Basic Multilingual Plane): a line ending
# in one of these counts as ending a sentence in the FineWeb line-punctuation rule.
TERMINAL_CLASS = (
    "[!.?\u0589\u061d-\u061f\u06d4\u0700-\u0702\u07f9\u0837\u0839\u083d\u083e\u0964\u0965\u104a\u104b"
    "\u1362\u1367\u1368\u166e\u1735\u1736\u17d4-\u17d6\u17d9\u17da\u1803\u1809\u1944\u1945\u1aa8-\u1aab"
    "\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e\u1c3b\u1c3c\u1c7e\u1c7f\u203c\u203d\u2047-\u2049\u2e2e\u2e3c"
    "\u2e53\u2e54\u3002\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877\ua8ce\ua8cf\ua92f\ua9c8\ua9c9"
    "\uaa5d-\uaa5f\uaaf0\uaaf1\uabeb\ufe52\ufe56\ufe57\uff01\uff0e\uff1f\uff61]"
)


@dataclass
class Pieces:
    """The pieces of every document of a batch, flattened: `values[i]` belongs to document `parent[i]`."""

    values: pa.Array  # string pieces
    parent: np.ndarray  # int64 document index per piece
    n_docs: int

    def lengths(self) -> np.ndarray:
        """Length in code points of each piece."""
        return pc.utf8_length(self.values).to_numpy(zero_copy_only=False).astype(np.int64)

    def count(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Pieces per document (only those where `mask` holds, when given)."""
        weights = None if mask is None else mask.astype(np.float64)
        return np.bincount(self.parent, weights=weights, minlength=self.n_docs).astype(np.int64)

    def total(self, values: np.ndarray) -> np.ndarray:
        """Sum of a per-piece value per document."""
        return np.bincount(self.parent, weights=values.astype(np.float64), minlength=self.n_docs)

    def matches(self, pattern: str) -> np.ndarray:
        """Per piece: does the RE2 pattern match anywhere in it."""
        return _bool(pc.match_substring_regex(self.values, pattern))

    def duplicates(self) -> np.ndarray:
        """Per piece: True when the same document holds an identical piece earlier on."""
        if len(self.values) == 0:
            return np.zeros(0, dtype=bool)
        codes = pc.dictionary_encode(self.values).indices.to_numpy(zero_copy_only=False).astype(np.int64)
        return first_seen_mask(self.parent, codes) == False  # noqa: E712 (numpy elementwise)


def first_seen_mask(parent: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Per element: True when it is the first element of its document with this key."""
    if len(keys) == 0:
        return np.zeros(0, dtype=bool)
    span = int(keys.max()) + 1 if keys.min() >= 0 else 0
    if 0 < span and (int(parent.max()) + 1) * span < 2**62:
        combined = parent * span + keys  # exact: one integer per (document, key)
    else:
        with np.errstate(over="ignore"):
            combined = keys.astype(np.uint64) ^ (parent.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))
    first = np.zeros(len(keys), dtype=bool)
    first[first_occurrences(combined)[0]] = True
    return first


def first_occurrences(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the earliest element of each distinct key, elements per key). An unstable sort plus a
    minimum per run is about twice as fast as `numpy.unique`'s stable sort on 64-bit keys."""
    order = np.argsort(keys)
    sorted_keys = keys[order]
    heads = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
    first = np.minimum.reduceat(order, heads) if len(order) else order
    counts = np.diff(np.append(heads, len(order)))
    return first, counts


def _bool(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False).astype(bool)


def as_array(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous string array (steps receive chunked columns)."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks() if text.num_chunks != 1 else text.chunk(0)
    return text.cast(pa.string()) if text.type != pa.string() else text


def split(text: pa.Array, pattern: str, regex: bool = False, drop_blank: bool = False) -> Pieces:
    """Split every document at `pattern`; `drop_blank` leaves out pieces that are only whitespace."""
    lists = pc.split_pattern_regex(text, pattern) if regex else pc.split_pattern(text, pattern)
    lists = pc.fill_null(lists, pa.scalar([], lists.type))
    parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(lists)
    pieces = Pieces(values, parent, len(text))
    if drop_blank and len(values):
        keep = pc.invert(pc.match_substring_regex(values, r"^\s*$"))
        pieces = Pieces(values.filter(keep), parent[_bool(keep)], len(text))
    return pieces


def words(text: pa.Array) -> "Words":
    """Word tokens: whitespace-separated, with leading and trailing punctuation as tokens of their own.

    Defined as RE2 rewrites and a split (`_LEADING`, `_TRAILING`, then `utf8_split_whitespace`; see
    `words_by_patterns`), found by the compiled `word_kernels.word_tokens` in one pass."""
    from llm.data.text_classes import classes
    from llm.data.word_kernels import word_tokens

    data, offsets = utf8_buffers(text)
    parent, starts, ends, lengths, flags, hashes = word_tokens(data, offsets.astype(np.int64), classes())
    return Words(None, parent, len(text), lengths, flags, hashes, data, starts, ends)


def word_counts(text: pa.Array) -> np.ndarray:
    """Per document, the number of `words` tokens (int64), without building them."""
    from llm.data.text_classes import classes
    from llm.data.word_kernels import word_tokens

    data, offsets = utf8_buffers(text)
    return word_tokens(data, offsets.astype(np.int64), classes(), False)[0]


def utf8_buffers(texts: "list[str] | pa.Array | pa.ChunkedArray") -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes and offsets of texts, straight from Arrow's buffers (a list is converted once;
    nulls read as empty texts): what the compiled loops take."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not isinstance(texts, pa.Array):
        texts = pa.array(texts, pa.large_string())
    if texts.null_count:
        texts = pc.fill_null(texts, "")
    _, offsets, data = texts.buffers()
    width = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    offsets = np.frombuffer(offsets, width, texts.offset + len(texts) + 1)[texts.offset:]
    return (np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)), offsets


def string_array(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """A string array over UTF-8 bytes and int64 offsets (large_string past 2 GiB)."""
    if offsets[-1] < 2**31:
        return pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data))
    return pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(data))


@dataclass
class Words(Pieces):
    """Word tokens as byte ranges of the batch's text, with what the compiled tokenizer measured on the
    way: code points per token, its `word_kernels` flags (a character other than punctuation, symbols
    and controls; a letter) and a 64-bit hash of its bytes. `values` (the tokens as strings) is built
    only when asked for."""

    code_points: np.ndarray = None  # int64 per token
    flags: np.ndarray = None  # uint8 per token
    hashes: np.ndarray = None  # uint64 per token
    data: np.ndarray = None  # the batch's UTF-8 bytes
    starts: np.ndarray = None  # int64 byte range of each token in `data`
    ends: np.ndarray = None

    @property
    def values(self) -> pa.Array:
        if self._values is None:
            from llm.data.word_kernels import gather

            self._values = string_array(*gather(self.data, self.starts, self.ends))
        return self._values

    @values.setter
    def values(self, value) -> None:
        self._values = value

    def lengths(self) -> np.ndarray:
        return self.code_points

    @property
    def is_word(self) -> np.ndarray:
        """Per token: holds a character that is not punctuation, a symbol or a control (`[^\\p{P}\\p{S}\\p{Cc}]`)."""
        from llm.data.word_kernels import IS_WORD

        return (self.flags & IS_WORD) > 0

    @property
    def has_letter(self) -> np.ndarray:
        """Per token: holds a letter (`\\pL`)."""
        from llm.data.word_kernels import HAS_LETTER

        return (self.flags & HAS_LETTER) > 0

    def index_in(self, strings: list[str]) -> np.ndarray:
        """Per token: the index of the first equal string in `strings`, or -1 (exact, by hash then bytes)."""
        from llm.data.word_kernels import hash_table, lookup

        data, offsets = utf8_buffers(pa.array(strings, pa.string()))
        table_starts, table_ends = offsets[:-1].astype(np.int64), offsets[1:].astype(np.int64)
        slots, table_hashes = hash_table(data, table_starts, table_ends)
        return lookup(self.data, self.starts, self.ends, self.hashes, data, table_starts, table_ends, slots,
                      table_hashes)


def text_counts(text: pa.Array, short_line_chars: int = 30, repetition: bool = True) -> dict[str, np.ndarray]:
    """Per document, the line, paragraph and character counts of `line_kernels.COUNTS` (name -> int64
    array), in one compiled pass; `short_line_chars` is FineWeb's short-line length. `repetition`
    False leaves the line-run and paragraph counts (Gopher repetition's) at 0."""
    from llm.data.line_kernels import COUNTS
    from llm.data.line_kernels import text_counts as kernel
    from llm.data.text_classes import classes

    data, offsets = utf8_buffers(text)
    table = kernel(data, offsets.astype(np.int64), classes(), int(short_line_chars), repetition)
    return {name: table[:, k] for k, name in enumerate(COUNTS)}


def count(text: pa.Array, pattern: str, regex: bool = False) -> np.ndarray:
    """Occurrences of a substring (or RE2 pattern) per document."""
    fn = pc.count_substring_regex if regex else pc.count_substring
    return fn(text, pattern).to_numpy(zero_copy_only=False).astype(np.int64)


def lengths(text: pa.Array) -> np.ndarray:
    return pc.utf8_length(text).to_numpy(zero_copy_only=False).astype(np.int64)


def ratio(num: np.ndarray, den: np.ndarray, empty: float = 0.0) -> np.ndarray:
    """num / den, with `empty` where the denominator is 0 (an empty document has no ratio to speak of)."""
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    out = np.full(len(num), empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out
