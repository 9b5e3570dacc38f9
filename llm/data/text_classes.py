"""Character classes of every code point, for the compiled text-signal loops (`word_kernels`).

The quality signals were first defined by RE2 patterns run through Arrow (`\\p{P}`, `\\pL`, `\\s`) and by
Arrow's Unicode whitespace. The compiled loops read the same classes from one table, and the table is
read off those same engines, run once over every code point, so a compiled signal and its pattern agree
on every character by construction. Built once per process (~0.2 s), or loaded from a copy saved beside
this module (keyed by the pyarrow version, whose RE2 and Unicode tables it records) after the first
build.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

# Flags of a code point (one uint8 each).
ARROW_SPACE = 1  # Arrow's Unicode whitespace: what `utf8_split_whitespace` splits on, `utf8_trim_whitespace` trims
PUNCT_SYMBOL = 2  # RE2 [\p{P}\p{S}]: split off the ends of word tokens
LETTER = 4  # RE2 \pL
CONTROL = 8  # RE2 \p{Cc}
RE2_SPACE = 16  # RE2 \s: ASCII [\t\n\f\r ] only (RE2's Perl classes are ASCII)
TERMINAL = 32  # a Unicode sentence terminal (`textsignals.TERMINAL_CLASS`)

# Arrow's Unicode whitespace (`IsSpaceCharacterUnicode`: the Zs/Zl/Zp categories, ASCII 9-13 and 28-31,
# U+0085). Listed, not derived: deriving it takes a trim over every code point (0.3 s). A test checks the
# list against Arrow.
ARROW_SPACES = (
    list(range(0x09, 0x0E)) + list(range(0x1C, 0x21)) + [0x85, 0xA0, 0x1680] + list(range(0x2000, 0x200B))
    + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
)
RE2_SPACES = (0x09, 0x0A, 0x0C, 0x0D, 0x20)


def _all_code_points():
    """Every code point but the surrogates (which UTF-8 cannot hold), as one Arrow string array of
    one-character strings, and the code points themselves."""
    import pyarrow as pa

    cps = np.r_[np.arange(0xD800), np.arange(0xE000, 0x110000)].astype(np.uint32)
    data = cps.tobytes().decode("utf-32-le").encode("utf-8")
    widths = np.where(cps < 0x80, 1, np.where(cps < 0x800, 2, np.where(cps < 0x10000, 3, 4))).astype(np.int32)
    offsets = np.r_[0, np.cumsum(widths)].astype(np.int32)
    return pa.StringArray.from_buffers(len(cps), pa.py_buffer(offsets), pa.py_buffer(data)), cps


def build_classes() -> np.ndarray:
    """The table, read off Arrow's RE2 (one pattern per class over every code point)."""
    import pyarrow.compute as pc

    from llm.data.textsignals import TERMINAL_CLASS

    chars, cps = _all_code_points()
    table = np.zeros(0x110000, np.uint8)
    for flag, pattern in _PATTERNS + ((TERMINAL, "^" + TERMINAL_CLASS + "$"),):
        hit = pc.match_substring_regex(chars, pattern).to_numpy(zero_copy_only=False)
        table[cps[hit]] |= flag
    table[list(ARROW_SPACES)] |= ARROW_SPACE
    table[list(RE2_SPACES)] |= RE2_SPACE
    return table


_PATTERNS = ((PUNCT_SYMBOL, r"^[\p{P}\p{S}]$"), (LETTER, r"^\pL$"), (CONTROL, r"^\p{Cc}$"))


def _saved_copy() -> Path:
    """Where the built table is kept: named by the pyarrow version (its RE2 and Unicode tables) and a
    digest of the definitions above, so a change to either builds it afresh."""
    import hashlib

    import pyarrow as pa

    from llm.data.textsignals import TERMINAL_CLASS

    definition = repr((_PATTERNS, TERMINAL_CLASS, ARROW_SPACES, RE2_SPACES)).encode()
    digest = hashlib.sha256(definition).hexdigest()[:12]
    return Path(__file__).resolve().parent / "__pycache__" / f"text_classes-pyarrow{pa.__version__}-{digest}.npy"


@functools.lru_cache(maxsize=1)
def classes() -> np.ndarray:
    """The table (uint8 flags per code point, 0x110000 entries), from the saved copy when there is one."""
    path = _saved_copy()
    try:
        table = np.load(path)
        if table.shape == (0x110000,) and table.dtype == np.uint8:
            return table
    except (OSError, ValueError):
        pass
    table = build_classes()
    try:  # best effort: a read-only install builds the table in each process instead
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, table)
        os.replace(tmp, path)
    except OSError:
        pass
    return table
