"""WorkDirLock on a local folder, against real other processes (no mocks): busy, SIGKILL recovery,
stale takeover rules, races, nesting, release."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm import workdir_lock
from llm.workdir_lock import LOCK_NAME, WorkDirBusy, WorkDirLock

REPO = Path(__file__).resolve().parents[2]

# Another process using the lock. Modes: "hold" takes it and sleeps until killed; "try" takes it and
# lets go; "race" waits for the file argv[3] to appear (so racers start together), tries, and if it
# won holds on until the file argv[4] appears. Prints "won <pid>" or "busy <message>" (exit 3).
CHILD = r"""
import os, sys, time
from pathlib import Path
from llm.workdir_lock import WorkDirBusy, WorkDirLock
work_dir, mode = sys.argv[1], sys.argv[2]
if mode == "race":
    go = Path(sys.argv[3])
    while not go.exists():
        time.sleep(0.001)
lock = WorkDirLock(work_dir, description=f"child {mode} {os.getpid()}")
try:
    lock.acquire()
except WorkDirBusy as exc:
    print("busy", exc, flush=True)
    sys.exit(3)
print("won", os.getpid(), flush=True)
if mode == "hold":
    time.sleep(600)
if mode == "race":
    release = Path(sys.argv[4])
    while not release.exists():
        time.sleep(0.01)
lock.release()
"""


def start_child(work_dir: str, mode: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, work_dir, mode, *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_child(work_dir: str) -> tuple[int, str]:
    """A second process trying the lock once: (exit code, its one line of output)."""
    proc = start_child(work_dir, "try")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 3), err
    return proc.returncode, out.strip()


def finish(proc: subprocess.Popen) -> None:
    """Stop a child this test started, by its PID, and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def stamp(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))


def write_record(lock_file: Path, **fields) -> dict:
    """A lock file as another run would have left it (this machine unless told otherwise)."""
    record = {"owner": "f" * 32, "pid": 1, **workdir_lock._machine(), "started": stamp(3600),
              "heartbeat": stamp(3600), "description": "old run"}
    record.update(fields)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock_file.write_text(json.dumps(record))
    return record


def race(work_dir: str, tmp_path: Path, racers: int, tag: str) -> list[str]:
    """Start `racers` processes on the lock at the same instant; the first line each printed."""
    go, release = tmp_path / f"go-{tag}", tmp_path / f"release-{tag}"
    procs = [start_child(work_dir, "race", str(go), str(release)) for _ in range(racers)]
    try:
        time.sleep(1.5)  # let every child import and start polling
        go.touch()
        lines = [p.stdout.readline().strip() for p in procs]
        release.touch()
        for p in procs:
            p.wait(timeout=120)
        return lines
    finally:
        for p in procs:
            finish(p)


def test_acquire_writes_the_record_and_release_removes_it(tmp_path):
    work = tmp_path / "work"
    with WorkDirLock(str(work), description="llmpipe run demo") as lock:
        record = json.loads((work / LOCK_NAME).read_text())
        assert lock.held and lock.lock_uri == str(work / LOCK_NAME)
        assert record["pid"] == os.getpid() and record["description"] == "llmpipe run demo"
        assert re.fullmatch(r"[0-9a-f]{32}", record["owner"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["started"])
        assert {"host", "heartbeat"} <= record.keys()
    assert not lock.held
    assert list(work.iterdir()) == []  # lock file gone, no temp or aside files left


def test_a_second_process_is_refused_with_a_message_naming_the_holder(tmp_path):
    work = str(tmp_path / "work")
    with WorkDirLock(work, description="llmpipe run demo"):
        code, line = run_child(work)
        record = json.loads((tmp_path / "work" / LOCK_NAME).read_text())
    assert code == 3 and line.startswith("busy ")
    message = line[len("busy "):]
    assert f"pid {os.getpid()}" in message and "'llmpipe run demo'" in message
    assert record["host"] in message and record["started"] in message
    assert str(tmp_path / "work" / LOCK_NAME) in message
    assert "wait for it" in message and "stop that process" in message
    # ... and once released, the same second process gets it.
    assert run_child(work)[0] == 0


def test_busy_message_is_one_line(tmp_path):
    exc = WorkDirBusy("/w", "/w/_lock.json", {"pid": 7, "host": "h", "started": "s", "description": "a\nb"})
    assert "\n" not in str(exc) and "'a b'" in str(exc) and exc.holder["pid"] == 7


@pytest.mark.parametrize("reap", [True, False], ids=["reaped", "zombie"])
def test_a_lock_left_by_a_sigkilled_process_is_recovered(tmp_path, caplog, reap):
    work = str(tmp_path / "work")
    child = start_child(work, "hold")
    try:
        assert child.stdout.readline().startswith("won")
        assert run_child(work)[0] == 3  # really held while it lives
        os.kill(child.pid, signal.SIGKILL)
        if reap:
            child.wait(timeout=60)
        else:  # dead but not reaped: its pid still answers signal 0
            deadline = time.time() + 30
            while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                assert time.time() < deadline
                time.sleep(0.05)
        assert (tmp_path / "work" / LOCK_NAME).exists()  # SIGKILL left it behind
        with caplog.at_level(logging.WARNING, logger="llm.workdir_lock"):
            with WorkDirLock(work):
                assert json.loads((tmp_path / "work" / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert f"pid {child.pid}" in caplog.text and "stale" in caplog.text
    finally:
        finish(child)


def test_a_free_flock_means_stale_even_when_the_pid_is_alive(tmp_path):
    """The pid was reused by an unrelated live process: the kernel-held flock is what counts."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        write_record(tmp_path / LOCK_NAME, pid=sleeper.pid, heartbeat=stamp(0))
        with WorkDirLock(str(tmp_path)):
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_held_flock_with_a_dead_pid_is_stale_but_with_a_live_pid_is_busy(tmp_path):
    """A fork child may keep the descriptor (and so the flock) after the owner died: the pid decides."""
    lock_file = tmp_path / LOCK_NAME
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        for pid, busy in [(sleeper.pid, True), (dead_pid(), False)]:
            write_record(lock_file, pid=pid, heartbeat=stamp(0))
            fd = os.open(lock_file, os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: conflicts with ours
            try:
                if busy:
                    with pytest.raises(WorkDirBusy, match=f"pid {pid} "):
                        WorkDirLock(str(tmp_path)).acquire()
                else:
                    with WorkDirLock(str(tmp_path)):
                        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
            finally:
                os.close(fd)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_another_hosts_lock_is_taken_over_only_when_its_heartbeat_is_old(tmp_path, caplog):
    lock_file = tmp_path / LOCK_NAME
    other = {"host": "other-host", "boot_id": "another-kernel", "pid_ns": "pid:[1]", "pid": 4242}
    # Fresh heartbeat: live, although no flock is held here (flocks of other machines are not trusted).
    write_record(lock_file, heartbeat=stamp(5), **other)
    with pytest.raises(WorkDirBusy, match="pid 4242 on host other-host"):
        WorkDirLock(str(tmp_path), stale_after_s=600).acquire()
    write_record(lock_file, heartbeat=stamp(700), **other)
    with caplog.at_level(logging.WARNING, logger="llm.workdir_lock"):
        with WorkDirLock(str(tmp_path), stale_after_s=600):
            assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert "other-host" in caplog.text and "heartbeat" in caplog.text
    assert not lock_file.exists()


def test_processes_racing_for_a_stale_lock_exactly_one_wins(tmp_path):
    work = tmp_path / "work"
    for round_ in range(3):
        write_record(work / LOCK_NAME, host="other-host", boot_id="another-kernel", heartbeat=stamp(7200))
        lines = race(str(work), tmp_path, racers=4, tag=str(round_))
        winners = [line for line in lines if line.startswith("won ")]
        assert len(winners) == 1, lines
        winner_pid = winners[0].split()[1]
        # Every loser names the winner, not the dead owner.
        assert all(f"pid {winner_pid} " in line for line in lines if line.startswith("busy ")), lines
        assert not (work / LOCK_NAME).exists()
        assert sorted(p.name for p in work.iterdir()) == []


def test_processes_racing_for_a_free_work_dir_exactly_one_wins(tmp_path):
    lines = race(str(tmp_path / "work"), tmp_path, racers=4, tag="free")
    assert sum(line.startswith("won ") for line in lines) == 1, lines


def test_nested_acquire_in_one_process_counts(tmp_path):
    work = tmp_path / "work"
    lock_file = work / LOCK_NAME
    with WorkDirLock(str(work), description="outer"):
        owner = json.loads(lock_file.read_text())["owner"]
        with WorkDirLock(str(work) + "/", description="inner"):  # the same folder, spelled differently
            assert json.loads(lock_file.read_text())["owner"] == owner
        assert lock_file.exists()  # the outer run still holds it
        assert run_child(str(work))[0] == 3
    assert not lock_file.exists()


def test_the_heartbeat_rewrites_the_same_flocked_file(tmp_path):
    lock_file = tmp_path / LOCK_NAME
    with WorkDirLock(str(tmp_path), heartbeat_s=0.2, stale_after_s=5):
        first = json.loads(lock_file.read_text())
        ino = lock_file.stat().st_ino
        time.sleep(2.2)
        later = json.loads(lock_file.read_text())
        assert later["heartbeat"] > first["heartbeat"] and later["owner"] == first["owner"]
        assert lock_file.stat().st_ino == ino
        fd = os.open(lock_file, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path, caplog):
    lock_file = tmp_path / LOCK_NAME
    lock = WorkDirLock(str(tmp_path))
    lock.acquire()
    lock_file.unlink()  # as if another run had taken it over
    theirs = write_record(lock_file, owner="a" * 32, description="the other run")
    with caplog.at_level(logging.WARNING, logger="llm.workdir_lock"):
        lock.release()
    assert json.loads(lock_file.read_text()) == theirs
    assert "taken over" in caplog.text
    with pytest.raises(RuntimeError, match="released more often"):
        lock.release()


def test_an_unreadable_lock_file_is_taken_over_unless_flocked(tmp_path):
    lock_file = tmp_path / LOCK_NAME
    lock_file.write_text("not json")
    fd = os.open(lock_file, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(WorkDirBusy, match="unreadable lock file"):
            WorkDirLock(str(tmp_path)).acquire()
    finally:
        os.close(fd)
    with WorkDirLock(str(tmp_path)):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
