"""Shingles: the set of hashed word or character n-grams of a document's normalized text.

A batch of documents is lower-cased and laid out as one array of code points; compiled loops
(`kernels`) then find the tokens (the same ones `tokens` finds with its regular expression, by a table
of every code point's class), hash them, and combine n consecutive token hashes into a shingle hash.
Nothing loops over tokens or shingles in Python.

- A token's hash is a sum over its characters of (code point + 1) times a fixed random odd 64-bit
  multiplier for the character's position, mixed with its length by splitmix64's finalizer.
- An n-gram's hash is the same kind of random linear combination of its n token hashes, mixed once.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from llm import storage
from llm.data.minhash import char_codes, kernels
from llm.data.textsignals import utf8_buffers

# Scripts written without spaces between words: each character is a token, so a 5-gram is 5 characters
# (a sensible unit for Chinese and Japanese, and a workable one for Thai, Lao, Khmer and Burmese without a
# dictionary segmenter). Hangul is left out: Korean separates words with spaces.
_NO_SPACE_RANGES = (
    (0x0E00, 0x0E7F),  # Thai
    (0x0E80, 0x0EFF),  # Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),  # CJK ideographs
)
_NO_SPACE_SCRIPTS = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in _NO_SPACE_RANGES)
# A token is one character of those scripts or a run of other letters/digits; punctuation, symbols and
# whitespace only separate tokens, so re-punctuated or re-spaced copies still match. This regular
# expression is the definition; `kernels.tokenize` finds the same tokens without it.
_TOKEN = re.compile(f"[{_NO_SPACE_SCRIPTS}]|[^\\W_{_NO_SPACE_SCRIPTS}]+")

_MAX_POS = 64  # characters past the 64th of a token share the last position multiplier


def _odd_multipliers(seed: int, count: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**63, size=count, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


# Fixed constants (not the MinHash seed): shingle hashes must not change between runs or releases.
_CHAR_POS = _odd_multipliers(0x5EED_C4A2, _MAX_POS)
_NGRAM_POS = _odd_multipliers(0x5EED_6A11, 65)  # one per n-gram position (n <= 64), and one for width


def _build_char_classes() -> np.ndarray:
    """Class of every code point: separator, word character (what the regular expression's `[^\\W_]`
    matches), or a token by itself (no-space scripts)."""
    table = np.zeros(0x110000, np.uint8)
    # The word-character class is read off the regular expression itself, run over every code point.
    for run in re.finditer(r"[^\W_]+", "".join(map(chr, range(0x110000)))):
        table[run.start():run.end()] = char_codes.WORD
    for lo, hi in _NO_SPACE_RANGES:
        table[lo:hi + 1] = char_codes.SINGLE
    return table


def _build_lower_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Python's `str.lower` as a table over every code point, for `kernels.decode_lower`: (table,
    expand_from, expand_to). Code points whose lower case is two code points (U+0130 becomes "i" and a
    combining dot) are flagged in the table and listed. Built a block at a time."""
    table = np.arange(0x110000, dtype=np.uint32)
    expand_from, expand_to = [], []
    for lo in range(0, 0x110000, 4096):
        block = "".join(map(chr, range(lo, lo + 4096)))
        low = block.lower()
        if len(low) == len(block):
            table[lo:lo + 4096] = np.frombuffer(low.encode("utf-32-le", "surrogatepass"), np.uint32)
            continue
        for c in range(lo, lo + 4096):
            lc = chr(c).lower()
            if len(lc) > 2:
                raise RuntimeError(f"U+{c:04X} lower-cases to {len(lc)} characters; the tokenizer supports two")
            table[c] = ord(lc[0])
            if len(lc) == 2:
                table[c] |= char_codes.EXPANDS
                expand_from.append(c)
                expand_to.append(ord(lc[1]))
    return table, np.array(expand_from, np.uint32), np.array(expand_to, np.uint32)


# The tables follow Python's Unicode database (`str.lower`, `re`'s word class) and the definitions
# above; building them runs over all 1.1M code points (~0.2 s), so each installation builds them once
# and keeps them beside numba's cache of the kernels, named by what they depend on.
_TABLES_KEY = hashlib.sha256(repr((unicodedata.unidata_version, sys.version_info[:2], _NO_SPACE_RANGES,
                                   char_codes.WORD, char_codes.SINGLE, int(char_codes.EXPANDS))).encode()).hexdigest()[:16]
_TABLES_FILE = Path(__file__).parent / "__pycache__" / f"shingles.tables-{_TABLES_KEY}.npz"


@functools.lru_cache(maxsize=1)
def _tables() -> dict[str, np.ndarray]:
    """The char-class and lower-case tables: read from `_TABLES_FILE`, else built (and saved there
    when the folder is writable; a read-only install builds them in each process)."""
    try:
        with np.load(_TABLES_FILE) as saved:
            return {k: saved[k] for k in saved.files}
    except (OSError, ValueError, KeyError):
        pass
    lower, expand_from, expand_to = _build_lower_table()
    tables = {"classes": _build_char_classes(), "lower": lower, "expand_from": expand_from, "expand_to": expand_to}
    buf = io.BytesIO()
    np.savez(buf, **tables)
    try:
        storage.write_bytes(str(_TABLES_FILE), buf.getvalue(), durable=False)  # whole or absent
    except OSError:
        pass
    return tables


def _char_classes() -> np.ndarray:
    return _tables()["classes"]


def _lower_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = _tables()
    return t["lower"], t["expand_from"], t["expand_to"]


def tokens(text: str) -> list[str]:
    """Normalized word tokens of `text` (lower-cased; CJK/Thai split per character)."""
    return _TOKEN.findall(text.lower())


@dataclass
class ShingleBatch:
    """Shingle hashes of a batch of documents, concatenated: document i owns
    `hashes[offsets[i]:offsets[i + 1]]` (sorted and unique within the document)."""

    hashes: np.ndarray  # uint64
    offsets: np.ndarray  # int64, len(documents) + 1

    def of(self, i: int) -> np.ndarray:
        return self.hashes[self.offsets[i]:self.offsets[i + 1]]

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass
class TokenSpans:
    """The tokens of a batch of documents: their hashes, and where they lie in the batch's lower-cased
    code points."""

    codes: np.ndarray  # uint32, the documents' lower-cased text, concatenated
    hashes: np.ndarray  # uint64, one per token
    starts: np.ndarray  # int64, where each token starts in `codes`
    lengths: np.ndarray  # int64, each token's length in code points
    token_ends: np.ndarray  # int64, tokens in documents 0..d

    @property
    def per_doc(self) -> np.ndarray:
        return np.diff(np.r_[0, self.token_ends])

    def strings(self) -> list[list[str]]:
        """The tokens as strings, per document (for tests and inspection)."""
        words = [self.codes[s:s + n].tobytes().decode("utf-32-le") for s, n in zip(self.starts, self.lengths)]
        bounds = np.r_[0, self.token_ends]
        return [words[bounds[i]:bounds[i + 1]] for i in range(len(self.token_ends))]


def token_spans(texts: "list[str] | pa.Array | pa.ChunkedArray") -> TokenSpans:
    """Tokens of every text (a list of strings or an Arrow string array), with their hashes."""
    codes, doc_ends = kernels.decode_lower(*utf8_buffers(texts), *_lower_table())
    hashes, starts, lengths, token_ends = kernels.tokenize(codes, doc_ends, _char_classes(), _CHAR_POS)
    return TokenSpans(codes, hashes, starts, lengths, token_ends)


_SHINGLE_BITS = 40  # shingles are 40-bit: collisions within one document's few thousand are ~1e-6 rare
_OWNER_LIMIT = 1 << (64 - _SHINGLE_BITS)


def _unique_per_doc(hashes: np.ndarray, owner: np.ndarray, docs: int) -> ShingleBatch:
    # One 64-bit key (document, shingle) sorts 3-7x faster than a two-key lexsort, and the default sort
    # kind is numpy's vectorised quicksort (equal keys are equal values, so stability is moot).
    if docs >= _OWNER_LIMIT:
        raise ValueError(f"at most {_OWNER_LIMIT - 1} documents per shingle batch")
    key = (owner.astype(np.uint64) << np.uint64(_SHINGLE_BITS)) | (hashes >> np.uint64(64 - _SHINGLE_BITS))
    key = np.sort(key)
    if len(key):
        key = key[np.r_[True, key[1:] != key[:-1]]]
    owner = (key >> np.uint64(_SHINGLE_BITS)).astype(np.int64)
    offsets = np.zeros(docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=docs), out=offsets[1:])
    return ShingleBatch(key & np.uint64((1 << _SHINGLE_BITS) - 1), offsets)


def word_shingles(texts: "list[str] | pa.Array", n: int) -> ShingleBatch:
    """Hashed word n-grams of each text."""
    spans = token_spans(texts)
    h, owner = kernels.ngram_hashes(spans.hashes, spans.token_ends, n, _NGRAM_POS)
    return _unique_per_doc(h, owner, len(texts))


def char_shingles(texts: "list[str] | pa.Array", n: int) -> ShingleBatch:
    """Hashed character n-grams of each text, over its tokens joined by single spaces."""
    spans = token_spans(texts)
    units, unit_ends = kernels.char_units(spans.codes, spans.starts, spans.lengths, spans.token_ends)
    h, owner = kernels.ngram_hashes(units, unit_ends, n, _NGRAM_POS)
    return _unique_per_doc(h, owner, len(texts))


def shingle(texts: "list[str] | pa.Array", kind: str, n: int) -> ShingleBatch:
    """Shingles of `texts`: `kind` is "word" or "char"."""
    if kind == "word":
        return word_shingles(texts, n)
    if kind == "char":
        return char_shingles(texts, n)
    raise ValueError(f"unknown shingle kind {kind!r} (word or char)")


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique shingle arrays."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)
