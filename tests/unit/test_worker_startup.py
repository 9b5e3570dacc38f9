"""A worker forked by the process executor skips pyarrow's pandas probe and numba's BLAS probe, and
both libraries still do everything they did: pandas when asked for, numba's linear algebra, llmpipe's
kernels. Run in a fresh interpreter: this test process has loaded pandas and scipy long ago."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import numba  # noqa: F401  (a stage module with numba kernels imports it)
    from llm.data.minhash.shingles import word_shingles
    from llm.executor import ProcessExecutor

    def convert(_):
        arr = pa.array(np.arange(5))
        total = int(pc.sum(arr).as_py()) + int(arr.to_numpy(zero_copy_only=False).sum())
        pairs = word_shingles(["one two three four five six", "one two three four five seven"], 5).counts.tolist()
        return {"total": total, "pairs": pairs, "pandas": "pandas" in sys.modules,
                "scipy.linalg": "scipy.linalg" in sys.modules}

    def asks_for_pandas(_):
        frame = pa.table({"x": [1, 2]}).to_pandas()
        back = pa.Table.from_pandas(frame)
        return {"type": type(frame).__name__, "rows": back.num_rows, "pandas": "pandas" in sys.modules}

    def linear_algebra(_):
        from numba import njit

        dot = njit(lambda a, b: np.dot(a, b))
        return float(dot(np.ones(3), np.arange(3.0)))

    with ProcessExecutor(workers=1) as ex:
        out = {"convert": ex.map(convert, [0])[0], "pandas": ex.map(asks_for_pandas, [0])[0],
               "dot": ex.map(linear_algebra, [0])[0], "parent_pandas": "pandas" in sys.modules}
    print(json.dumps(out))
""")


def test_worker_skips_both_probes_and_keeps_every_feature():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # pyarrow converted and numba's kernels ran, with neither pandas nor scipy.linalg imported
    assert out["convert"] == {"total": 20, "pairs": [2, 2], "pandas": False, "scipy.linalg": False}
    # ... and pandas comes the moment something asks for it, both ways
    assert out["pandas"] == {"type": "DataFrame", "rows": 2, "pandas": True}
    # numba's BLAS-backed functions still compile in the worker (their own check finds scipy)
    assert out["dot"] == 3.0
    assert out["parent_pandas"] is False  # the parent process is left as it was
