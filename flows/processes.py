"""Background processes recorded by PID: started in a session of their own, recognised later by their
start time (a PID the system has since given to another program is not taken for the recorded one),
and stopped with their process group and descendants."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

STOP_GRACE_S = 15.0  # time to shut down cleanly (a worker tells the server it is leaving) before SIGKILL


@dataclass
class ServedProcess:
    """One background process: its PID, the kernel's start time of that PID (so a PID the system gave
    to another program since is not taken for it), its log file and its command line."""

    pid: int
    start_time: int | None
    log: str
    command: list[str] = field(default_factory=list)


def _proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state letter, parent PID, start time in clock ticks, process group) of `pid` from /proc; None
    when unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        # The command name (field 2) may hold spaces and parentheses: the fields that follow start
        # after the last ')'.
        fields = text[text.rindex(")") + 2:].split()
        return fields[0], int(fields[1]), int(fields[19]), int(fields[2])
    except (OSError, ValueError, IndexError):  # gone while being read, or no /proc here
        return None


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), None where /proc does not say."""
    stat = _proc_stat(pid)
    return stat[2] if stat else None


def is_running(proc: ServedProcess) -> bool:
    """Whether the recorded process is still running: the PID exists, is not a zombie, and (where
    /proc tells) started when the recorded one did."""
    try:
        # Our own child once reaped is gone for good; anyone else's is reaped by its parent.
        if os.waitpid(proc.pid, os.WNOHANG)[0] == proc.pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user: the start time below decides whether it is ours
    stat = _proc_stat(proc.pid)
    if stat is None:
        return True
    state, _, start, _ = stat
    if state in ("Z", "X"):
        return False
    return proc.start_time is None or start == proc.start_time


def _descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children, their children, ...), from /proc; empty without it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _proc_stat(int(entry.name))
        if stat:
            children.setdefault(stat[1], []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_tree(pid: int, descendants: list[int], sig: int) -> None:
    """Send `sig` to `pid`'s process group (serve starts each process as a group leader) and to the
    descendants that left it (a subprocess started in its own session)."""
    try:
        leads_group = os.getpgid(pid) == pid
    except ProcessLookupError:
        leads_group = True  # the leader is gone; what is left of its group still is not
    try:
        if leads_group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
    for child in descendants:
        try:
            os.kill(child, sig)
        except ProcessLookupError:
            pass


def _group_alive(pgid: int) -> bool:
    """Whether members of the process group led by `pgid` live on after their leader ended.

    The kernel keeps a dead leader's PID as its group's id while members live, and hands it to no new
    process meanwhile; a PID another program holds now is never taken for the group."""
    stat = _proc_stat(pgid)
    if stat is not None and stat[0] not in ("Z", "X"):
        return False
    if Path("/proc/self/stat").exists():
        # A zombie leader still counts as a member for the kernel: only live members matter here.
        members = (_proc_stat(int(entry.name)) for entry in Path("/proc").glob("[0-9]*"))
        return any(m is not None and m[3] == pgid and m[0] not in ("Z", "X") for m in members)
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _tree_alive(proc: ServedProcess, descendants: list[int]) -> bool:
    if is_running(proc) or _group_alive(proc.pid):  # a group member left behind, e.g. a server's worker
        return True
    return any(is_running(ServedProcess(pid=d, start_time=None, log="")) for d in descendants)


def stop_processes(processes: dict[str, ServedProcess], grace_s: float = STOP_GRACE_S) -> dict[str, str]:
    """Stop the given processes (in their order) with their groups and descendants: SIGTERM to all,
    then SIGKILL to what is left after `grace_s`. Returns name -> "stopped", "killed" or "not running"."""
    outcome: dict[str, str] = {}
    trees: dict[str, list[int]] = {}
    for name in processes:
        proc = processes[name]
        if not is_running(proc) and not _group_alive(proc.pid):
            outcome[name] = "not running"
            continue
        trees[name] = _descendants(proc.pid)
        _signal_tree(proc.pid, trees[name], signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_tree_alive(processes[n], d) for n, d in trees.items()):
        time.sleep(0.2)
    for name, descendants in trees.items():
        if _tree_alive(processes[name], descendants):
            _signal_tree(processes[name].pid, descendants + _descendants(processes[name].pid), signal.SIGKILL)
            outcome[name] = "killed"
        else:
            outcome[name] = "stopped"
    # Reap our own children (a serve that failed half-way), so none is left a zombie.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_tree_alive(processes[n], d) for n, d in trees.items()):
        time.sleep(0.1)
    return outcome


def start_process(command: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> ServedProcess:
    """Start `command` in the background, in a session of its own, its output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"--- {datetime.now(timezone.utc).isoformat(timespec='seconds')} {' '.join(command)}\n".encode())
        log.flush()
        # Its own session: a process group to stop as one, and no terminal signal (Ctrl-C in the shell
        # that ran `serve`) reaches it.
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True)
    return ServedProcess(pid=proc.pid, start_time=process_start_time(proc.pid), log=str(log_path), command=command)


def log_tail(path: str | Path) -> str:
    """The last line of a log that says something (for a one-line error); empty when there is none.

    Rich's panel borders (Prefect's CLI draws its messages in boxes) are not text: they are dropped."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    lines = [" ".join(line.strip(" │┃╭╮╰╯─━").split()) for line in text.splitlines()]
    lines = [line for line in lines if any(c.isalnum() for c in line)]
    return lines[-1] if lines else ""
