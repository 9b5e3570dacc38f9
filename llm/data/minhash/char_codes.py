"""The codes the MinHash tokenizer's tables and kernels share (no numba here: `kernels` may run
without it)."""

import numpy as np

WORD, SINGLE = 1, 2  # character classes (0 separates tokens)
EXPANDS = np.uint32(0x80000000)  # lower-case table flag: one more code point follows (see `decode_lower`)
LOW_BITS = np.uint32(0x7FFFFFFF)
