"""numba's `njit` with its on-disk cache wherever one can be written.

A kernel compiled with `cache=True` is compiled once per installation and loaded in a fraction of a
second after that. Where numba finds no writable place for the cache (a read-only install and no
writable home or NUMBA_CACHE_DIR) it refuses `cache=True` with a RuntimeError at import time; the
kernel is then compiled in each process instead of failing the import.
"""

from __future__ import annotations

from numba import njit


def njit_cached(fn=None, **options):
    """`numba.njit(cache=True, **options)`, or without the cache where none can be written. Used bare
    (`@njit_cached`) or with options (`@njit_cached(inline="always")`)."""
    def compile_(f):
        try:
            return njit(cache=True, **options)(f)
        except RuntimeError:  # no writable cache location: compile in each process instead
            return njit(**options)(f)

    return compile_(fn) if fn is not None else compile_
