"""What a freshly forked worker process (`llm.executor.ProcessExecutor`) skips on its way to its first
item: two probes that libraries make on first use and that llmpipe's stages never need.

- pyarrow's first conversion (`pa.array`, `to_numpy`, `pa.table`, ...) imports pandas to check
  whether its argument is a pandas object: ~0.2 s per process. A worker runs llmpipe's stage code,
  which passes pyarrow no pandas objects, so the check is made once with pandas hidden and pyarrow
  remembers "no pandas". pyarrow still imports pandas as soon as anything asks for it (`to_pandas`,
  `from_pandas`); only `pa.array(<pandas object>)` before that would read it as a plain sequence.
- numba's first compiled call loads its whole CPU target, and with it `scipy.linalg` (~0.15 s) only to
  check that a BLAS exists for `np.dot`-like functions. The target is loaded here with `scipy.linalg`
  hidden for that one check. numba's linear-algebra functions check again when they are compiled
  (scipy is found then); the one lasting effect is that numba's `np.convolve` / `np.correlate` use
  their own loop instead of BLAS in this process. llmpipe's kernels use neither.

Both run only in processes whose parent has already imported the library (a stage that uses it), so
a worker of a stage without numba does not load numba's target for nothing.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager


class _Refuse:
    """A meta-path finder that makes `import <name>` (and its submodules) fail with ImportError."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name or fullname.startswith(self.name + "."):
            raise ModuleNotFoundError(f"{fullname} is hidden while a start-up probe runs", name=fullname)
        return None


@contextmanager
def _hidden(module: str):
    """`import module` fails inside the block (a no-op for a module already imported)."""
    finder = _Refuse(module)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def skip_pandas_probe() -> None:
    """Make pyarrow's one-time pandas check now, with pandas hidden (no-op where pandas is loaded)."""
    if "pyarrow" not in sys.modules or "pandas" in sys.modules:
        return
    import pyarrow as pa

    with _hidden("pandas"):
        pa.array([0])


def load_numba_target() -> None:
    """Load numba's CPU target now, without its BLAS probe's import of `scipy.linalg` (no-op when numba
    is not imported or its target is already loaded)."""
    if "numba" not in sys.modules or "numba.np.arraymath" in sys.modules:
        return
    from numba.core.registry import cpu_target

    with _hidden("scipy.linalg"):
        cpu_target.target_context.refresh()


def prepare_worker() -> None:
    """Both of the above, for a process that will run llmpipe's stage code."""
    skip_pandas_probe()
    load_numba_target()
