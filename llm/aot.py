"""Kernels compiled ahead of time: a module's numba kernels built once into a C extension beside it.

A process that calls compiled kernels through numba pays for numba on its way in: importing it
(~0.14 s), loading its CPU target (~0.15 s) and loading each cached kernel (a few ms each); a data
stage's worker processes pay that before their first item. An extension built from the same kernels
(numba's ahead-of-time compiler) loads like any other shared library, in milliseconds, with no numba
in the process at all.

`load` returns the extension for a set of kernels, building it the first time (seconds; it needs a C
compiler, as numba's ahead-of-time compiler does) into the kernels' `__pycache__`, named by a digest of
their source, their signatures, the numba and Python versions and this CPU's features (the code is
built for this CPU, as numba's own cache is). Where it cannot be built (no compiler, a read-only
install) or `LLMPIPE_AOT=0`, it returns None and the caller uses its numba kernels: the same code, the
same results. A build that failed leaves a `.failed` note beside where the extension would be, so
other processes do not try again (remove it to retry).

An extension's functions check nothing about their arguments: an array of another dtype or layout
would be read as if it were the declared one. Callers therefore go through `Kernel` wrappers, which
convert every argument to the declared dtype and C layout first (no copy when it already is).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import platform
import sys
import sysconfig
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

# numba type names of the dtypes a kernel argument may have
_NUMBA_TYPES = {"u1": "uint8", "u4": "uint32", "u8": "uint64", "i4": "int32", "i8": "int64", "f8": "float64"}
_DTYPES = {code: np.dtype(code) for code in _NUMBA_TYPES}


@dataclass(frozen=True)
class Kernel:
    """A kernel's one signature: per argument its dtype code (`u8`, `i8`, ...) and number of dimensions
    (0: a scalar), and the numba type of what it returns."""

    args: tuple[tuple[str, int], ...]
    returns: str

    @property
    def signature(self) -> str:
        """The numba signature string, e.g. `u8[:, ::1](u8[::1], i8)`."""
        def arg(code: str, ndim: int) -> str:
            return code if ndim == 0 else f"{code}[{', '.join([':'] * (ndim - 1) + ['::1'])}]"

        return f"{self.returns}({', '.join(arg(c, n) for c, n in self.args)})"

    def wrap(self, fn: Callable, name: str) -> Callable:
        """`fn` called with every argument converted to its declared dtype, layout and scalar type."""
        specs = self.args

        def call(*values):
            if len(values) != len(specs):
                raise TypeError(f"{name}() takes {len(specs)} arguments, not {len(values)}")
            ready = []
            for value, (code, ndim) in zip(values, specs):
                if ndim == 0:
                    ready.append(_DTYPES[code].type(value))
                    continue
                arr = np.ascontiguousarray(value, dtype=_DTYPES[code])
                if arr.ndim != ndim:
                    raise ValueError(f"{name}(): an argument has {arr.ndim} dimensions, {ndim} expected")
                ready.append(arr)
            return fn(*ready)

        call.__name__ = name
        call.__doc__ = getattr(fn, "__doc__", None)
        return call


def enabled() -> bool:
    return os.environ.get("LLMPIPE_AOT", "1").lower() not in ("0", "false", "no", "off")


def load(source: str, kernels: dict[str, Kernel], jit_module: Callable[[], object]):
    """The extension module built from the numba kernels of `source` (a file path) named in `kernels`,
    or None where it cannot be had (see the module docstring). `jit_module()` imports the module that
    defines them (numba-compiled); it is called only to build."""
    if not enabled():
        return None
    path = Path(source)
    name = f"{path.stem}_aot_{_digest(path, kernels)}"
    target = path.parent / "__pycache__" / (name + _extension_suffix())
    failed = target.with_name(name + ".failed")  # a build that failed here is not tried in every process
    if not target.exists():
        if failed.exists() or not _compiler():
            return None
        try:
            _build(name, target, kernels, jit_module())
        except Exception as exc:  # read-only folder, a compiler that fails, ...: numba's kernels instead
            log.debug("ahead-of-time kernels for %s not built (%s); using numba's", path.name, exc)
            try:
                failed.write_text(f"{type(exc).__name__}: {exc}\n")
            except OSError:
                pass
            return None
    try:
        loader = importlib.machinery.ExtensionFileLoader(name, str(target))
        spec = importlib.util.spec_from_file_location(name, str(target), loader=loader)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        return module
    except ImportError as exc:
        log.debug("ahead-of-time kernels %s did not load (%s); using numba's", target, exc)
        return None


def _compiler() -> str | None:
    """The C compiler Python's build tools would use (numba's ahead-of-time compiler needs one)."""
    import shlex
    import shutil

    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(shlex.split(cc)[0]) if cc.strip() else None


def _extension_suffix() -> str:
    return sysconfig.get_config_var("EXT_SUFFIX") or importlib.machinery.EXTENSION_SUFFIXES[0]


def _digest(source: Path, kernels: dict[str, Kernel]) -> str:
    parts = [source.read_bytes(), repr(sorted((k, v.signature) for k, v in kernels.items())).encode(),
             _numba_version().encode(), sys.version.encode(), _cpu().encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _numba_version() -> str:
    """numba's version, read from its installed metadata (importing numba is what this module avoids)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("numba")
    except PackageNotFoundError:
        return "none"


def _cpu() -> str:
    """This CPU's model and features: code built for one CPU may not run on another."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            info = {}
            for line in fh:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
                if "flags" in info and "model name" in info:
                    break
            return f"{info.get('model name', '')}|{info.get('flags', '')}"
    except OSError:
        return f"{platform.machine()}|{platform.processor()}"


def _build(name: str, target: Path, kernels: dict[str, Kernel], module) -> None:
    """Compile `module`'s kernels into `target` (through a folder beside it and a rename, so the file
    appears whole; two processes building at once both succeed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".aot-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba marks its ahead-of-time compiler as pending deprecation
        from numba.pycc import CC

        cc = CC(name)
        cc.output_dir = tmp
        cc.target_cpu = "host"
        cc.verbose = False
        for fname, kernel in kernels.items():
            cc.export(fname, kernel.signature)(getattr(module, fname).py_func)
        cc.compile()
        (built,) = Path(tmp).glob(name + "*")
        os.replace(built, target)
