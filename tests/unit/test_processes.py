"""Background processes recorded by PID: recognised by their start time, stopped with their group and
descendants (also one that left the group for a session of its own), SIGKILL for what ignores SIGTERM."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil

from flows.processes import ServedProcess, is_running, log_tail, process_start_time, start_process, stop_processes

# A parent with a child in its process group and a grandchild in a session of its own (as a flow run's
# subprocess may start), each writing its PID; with `ignore`, the whole tree ignores SIGTERM.
TREE = """
import os, signal, subprocess, sys, time
out, ignore = sys.argv[1], sys.argv[2] == "1"
if ignore:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
code = "import signal, time\\n" + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n" if ignore else "") + \\
    "time.sleep(300)"
child = subprocess.Popen([sys.executable, "-c", code])
grandchild = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
with open(out + ".tmp", "w") as f:
    f.write(f"{child.pid} {grandchild.pid}")
os.replace(out + ".tmp", out)
time.sleep(300)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _tree(tmp_path: Path, ignore: bool) -> tuple[ServedProcess, list[int]]:
    pids_file = tmp_path / "pids"
    proc = start_process([sys.executable, "-c", TREE, str(pids_file), "1" if ignore else "0"],
                         tmp_path / "logs" / "tree.log", dict(os.environ), tmp_path)
    deadline = time.monotonic() + 30
    while not pids_file.exists():
        assert time.monotonic() < deadline, (tmp_path / "logs" / "tree.log").read_text()
        time.sleep(0.05)
    return proc, [proc.pid, *map(int, pids_file.read_text().split())]


def test_stop_ends_the_process_its_group_and_a_descendant_in_another_session(tmp_path):
    proc, pids = _tree(tmp_path, ignore=False)
    try:
        assert is_running(proc) and os.getpgid(pids[2]) != os.getpgid(proc.pid) == os.getpgid(pids[1])
        assert stop_processes({"tree": proc}, grace_s=10) == {"tree": "stopped"}
        assert [pid for pid in pids if not _gone(pid)] == []
        assert not is_running(proc)
        assert stop_processes({"tree": proc}, grace_s=1) == {"tree": "not running"}
    finally:
        for pid in pids:
            if not _gone(pid):
                os.kill(pid, 9)


def test_what_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    proc, pids = _tree(tmp_path, ignore=True)
    try:
        started = time.monotonic()
        assert stop_processes({"tree": proc}, grace_s=1) == {"tree": "killed"}
        assert time.monotonic() - started >= 1
        assert [pid for pid in pids if not _gone(pid)] == []
    finally:
        for pid in pids:
            if not _gone(pid):
                os.kill(pid, 9)


def test_a_pid_with_another_start_time_is_not_the_recorded_process():
    me = os.getpid()
    assert is_running(ServedProcess(me, process_start_time(me), "x.log"))
    assert not is_running(ServedProcess(me, process_start_time(me) + 1, "x.log"))
    # ...and stopping that record leaves the process that holds the PID now alone.
    stale = ServedProcess(me, process_start_time(me) + 1, "x.log")
    assert stop_processes({"stale": stale}) == {"stale": "not running"}


def test_log_tail_is_the_last_line_with_text(tmp_path):
    log = tmp_path / "deploy.log"
    log.write_text("Traceback ...\nValueError: bad entrypoint\n╭────╮\n│ Deployment failed │\n╰────╯\n\n")
    assert log_tail(log) == "Deployment failed"
    assert log_tail(tmp_path / "missing.log") == ""
