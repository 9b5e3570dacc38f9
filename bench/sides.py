"""What every side-by-side benchmark shares: one CPU for both sides, and each side in its own subprocess.

A benchmark script runs itself again with `--side NAME --out DIR --spawned T` (plus its own options); the
child times its runs from `T`, the parent's CLOCK_MONOTONIC at the spawn, and writes `DIR/times.json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pin_to_one_core() -> int:
    """Run this process (and the children it starts) on one CPU so both sides get the same core count."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    return 1


def child_env() -> dict[str, str]:
    """The environment of a side: this one, with the repository importable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def spawn_side(script: str, side: str, out: Path, *options: str) -> dict:
    """Run `script` as side `side` into `out` (created; its log beside it) and return its times.json.
    Exits with the side's last log lines when it fails."""
    out.mkdir(parents=True)
    log = out.parent / f"{out.name}.log"  # the side's own logging, kept out of the report
    with open(log, "w") as fh:
        spawned = time.monotonic()
        done = subprocess.run([sys.executable, str(Path(script).resolve()), "--side", side, "--out", str(out),
                               *options, "--spawned", repr(spawned)], stdout=fh, stderr=subprocess.STDOUT,
                              env=child_env())
    if done.returncode:
        sys.exit(f"{side} failed ({done.returncode}):\n" + log.read_text()[-4000:])
    return json.loads((out / "times.json").read_text())
