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


def alternate(script: str, sides: list[str], root: Path, repeat: int, *options: str) -> dict[str, dict]:
    """Run every side `repeat` times, alternating, into `root/<side>-<round>`; per side the round with
    the fastest start-up (its `out` the round's folder) and the fastest steady run of any round."""
    best: dict[str, dict] = {}
    width = max(map(len, sides))
    for r in range(repeat):
        for side in sides:
            out = root / f"{side}-{r}"
            t = {**spawn_side(script, side, out, *options), "out": out}
            cpu = f" (CPU {t['startup_cpu']:.2f} s, {t['steady_cpu']:.2f} s)" if "steady_cpu" in t else ""
            print(f"  round {r + 1} {side:<{width}}: with start-up {t['startup']:7.2f} s, steady {t['steady']:7.2f} s{cpu}",
                  flush=True)
            steady = min(t["steady"], best[side]["steady"]) if side in best else t["steady"]
            if side not in best or t["startup"] < best[side]["startup"]:
                best[side] = t
            best[side]["steady"] = steady
    return best


def timed_child(job, out: Path, spawned: float) -> None:
    """A side's two runs: `job(out / "first")` timed from the parent's spawn (CLOCK_MONOTONIC), then
    `job(out / "steady")` on its own; both written to `out/times.json`, with the CPU seconds of this
    process's threads in each (`*_cpu`; a figure the machine's other load moves less than wall time)."""
    job(out / "first")
    first, first_cpu = time.monotonic() - spawned, time.process_time()
    t0 = time.monotonic()
    job(out / "steady")
    steady, steady_cpu = time.monotonic() - t0, time.process_time() - first_cpu
    (out / "times.json").write_text(json.dumps({"startup": first, "steady": steady, "startup_cpu": first_cpu,
                                                "steady_cpu": steady_cpu}))
