"""The MinHash stage's compiled loops, as callers use them: built ahead of time when possible.

The kernels are written once, for numba, in `jit_kernels`. `llm.aot` builds them into an extension
the first time and loads that in every later process, so a worker that shingles and hashes never
imports numba (about 0.3 s saved per process); where no extension can be built the numba kernels are
used. Either way every argument is first converted to the one signature declared here.
"""

from __future__ import annotations

from llm import aot
from llm.aot import Kernel
from llm.data.minhash.char_codes import EXPANDS as _EXPANDS  # noqa: F401  (the tokenizer's tables use them)
from llm.data.minhash.char_codes import SINGLE, WORD  # noqa: F401

SIGNATURES = {
    "decode_lower": Kernel((("u1", 1), ("i8", 1), ("u4", 1), ("u4", 1), ("u4", 1)), "Tuple((u4[::1], i8[::1]))"),
    "tokenize": Kernel((("u4", 1), ("i8", 1), ("u1", 1), ("u8", 1)), "Tuple((u8[::1], i8[::1], i8[::1], i8[::1]))"),
    "char_units": Kernel((("u4", 1), ("i8", 1), ("i8", 1), ("i8", 1)), "Tuple((u8[::1], i8[::1]))"),
    "ngram_hashes": Kernel((("u8", 1), ("i8", 1), ("i8", 0), ("u8", 1)), "Tuple((u8[::1], i8[::1]))"),
    "minhash": Kernel((("u8", 1), ("i8", 1), ("u8", 1), ("u8", 1), ("u8", 0)), "u8[:, ::1]"),
    "band_hashes": Kernel((("u8", 2), ("i8", 0), ("i8", 0)), "u8[:, ::1]"),
    "pair_jaccard": Kernel((("u8", 1), ("i8", 1), ("i8", 1), ("u8", 1), ("i8", 1), ("i8", 1)), "f8[::1]"),
}


def _jit_module():
    from llm.data.minhash import jit_kernels

    return jit_kernels


def _jit_source() -> str:
    from importlib.util import find_spec

    return find_spec("llm.data.minhash.jit_kernels").origin


_BUILT = aot.load(_jit_source(), SIGNATURES, _jit_module)
IMPLEMENTATION = "ahead-of-time" if _BUILT is not None else "numba"
_impl = _BUILT if _BUILT is not None else _jit_module()

decode_lower = SIGNATURES["decode_lower"].wrap(_impl.decode_lower, "decode_lower")
tokenize = SIGNATURES["tokenize"].wrap(_impl.tokenize, "tokenize")
char_units = SIGNATURES["char_units"].wrap(_impl.char_units, "char_units")
ngram_hashes = SIGNATURES["ngram_hashes"].wrap(_impl.ngram_hashes, "ngram_hashes")
minhash = SIGNATURES["minhash"].wrap(_impl.minhash, "minhash")
band_hashes = SIGNATURES["band_hashes"].wrap(_impl.band_hashes, "band_hashes")
pair_jaccard = SIGNATURES["pair_jaccard"].wrap(_impl.pair_jaccard, "pair_jaccard")
