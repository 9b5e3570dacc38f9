"""Two runs on one work directory: the second stops at once with one line naming the first; after the
first is killed, its lock is recovered and the next run goes ahead."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from llm.workdir_lock import WorkDirLock

pytestmark = pytest.mark.integration

_HOLDER = """
import sys, time
from llm.workdir_lock import WorkDirLock
with WorkDirLock(sys.argv[1], description="llmpipe run (first)"):
    print("held", flush=True)
    time.sleep(300)
"""


def test_a_second_run_refuses_and_a_killed_runs_lock_is_recovered(tmp_path):
    work = tmp_path / "work"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(work)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
        env.pop("PREFECT_API_URL", None)
        second = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", f"work_dir={work}", "tracking.enabled=false"],
                                capture_output=True, text=True, timeout=300, env=env)
        assert second.returncode == 2, second.stderr[-2000:]
        error = [line for line in second.stderr.splitlines() if line.startswith("llmpipe: error:")]
        assert len(error) == 1 and str(holder.pid) in error[0] and "llmpipe run (first)" in error[0]
        assert "Traceback" not in second.stderr
        assert not (work / "datasets").exists()  # it stopped before doing anything
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with WorkDirLock(str(work), description="after the kill") as lock:  # stale: its holder is dead
        assert lock.held
