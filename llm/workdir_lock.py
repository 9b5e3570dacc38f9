"""One pipeline run per work directory: `WorkDirLock` guards a local folder or an s3:// prefix.

Two runs writing the same work directory would interleave their shards, manifests and checkpoints;
the second one is refused at once with `WorkDirBusy`, which names the first (command, pid, host, start
time) so the user can wait for it or stop it. Nothing ever waits for a lock.

The lock is the file `<work_dir>/_lock.json`: owner id, pid, host, start time, description and a
heartbeat (UTC, refreshed every `heartbeat_s` by a daemon thread). A lock whose owner is gone is stale
and is taken over, with a warning naming the dead owner:

- same machine (same kernel boot id): stale when the holder's `flock` on the lock file can be taken
  (the kernel drops it when the holder dies, however it dies), or when its pid is not running (same
  pid namespace only; this catches a fork child that inherited the lock file and outlived its parent);
- another machine (a shared filesystem or S3): stale when the heartbeat is older than `stale_after_s`
  (pids and flocks of other machines cannot be checked reliably); clocks must agree to well within
  that margin.

Local folders: the lock file appears atomically and complete (see `_create_local`), and takeovers
and releases are serialized by a `flock` on the work directory itself, so two processes racing for a
stale lock cannot both win. S3: conditional PUTs (If-None-Match: * to create, If-Match: <ETag> to take
over, heartbeat and delete), atomic on the server; see `llm.conditional_writes.put_conditional` for stores
without them.

A process that already holds the lock (a flow calling a nested flow on the same work directory)
acquires it again without waiting: a process-level registry counts the nesting, and the last exit
releases.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llm import conditional_writes, storage
from llm.errors import UserError

log = logging.getLogger("llm.workdir_lock")

LOCK_NAME = "_lock.json"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # fixed width: a heartbeat rewrite keeps the file's length
_GUARD_TIMEOUT_S = 10.0
_ATTEMPTS = 5


class WorkDirBusy(RuntimeError, UserError):
    """Another live run holds the work directory's lock. `holder` is its lock record (pid, host,
    started, description, ...), `lock_uri` the lock file; the message is one line that says both."""

    def __init__(self, work_dir: str, lock_uri: str, holder: dict[str, Any]):
        self.work_dir, self.lock_uri, self.holder = work_dir, lock_uri, holder
        pid, host = holder.get("pid", "?"), holder.get("host", "?")
        what = " ".join(str(holder.get("description") or "an unnamed run").split())  # one line
        super().__init__(
            f"work directory {work_dir} is in use by another run: {what!r} (pid {pid} on host {host}, "
            f"started {holder.get('started', '?')}, last heartbeat {holder.get('heartbeat', '?')}; lock file "
            f"{lock_uri}): wait for it to finish, or stop that process (kill {pid} on {host}) and run again"
        )


def _now() -> str:
    return datetime.now(timezone.utc).strftime(_TIME_FORMAT)


def _age_s(stamp: Any) -> float:
    """Seconds since a `_TIME_FORMAT` stamp; infinite when missing or unreadable."""
    try:
        then = datetime.strptime(str(stamp), _TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        return float("inf")
    return (datetime.now(timezone.utc) - then).total_seconds()


def _read_first_line(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.readline().strip()
    except OSError:
        return ""


def _machine() -> dict[str, str]:
    """Who we are, beyond the host name (which containers and laptops often share): the kernel's boot
    id (same kernel: flocks are shared) and the pid namespace (same namespace: pids mean the same)."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = ""
    return {"host": socket.gethostname(), "boot_id": _read_first_line("/proc/sys/kernel/random/boot_id"),
            "pid_ns": pid_ns}


def _pid_alive(pid: Any) -> bool:
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (ValueError, TypeError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # exists, owned by another user
    # A zombie (dead, not yet reaped by its parent) still answers signal 0.
    stat = _read_first_line(f"/proc/{pid}/stat")
    return not (stat and stat.rsplit(")", 1)[-1].split()[:1] == ["Z"])


def _stale_reason(holder: dict[str, Any], me: dict[str, str], stale_after_s: float,
                  flock_free: bool | None) -> str | None:
    """Why the lock `holder` wrote is stale, or None when its owner may be alive. `flock_free`: whether
    the holder's flock could be taken (None on S3, where there is none)."""
    if holder.get("unreadable"):
        # Not a record this module wrote (ours are complete from the start); a held flock still
        # means a live holder.
        return None if flock_free is False else "the lock file is unreadable"
    same_kernel = bool(me["boot_id"]) and holder.get("boot_id") == me["boot_id"]
    if same_kernel:
        if flock_free:
            return f"its process is gone (pid {holder.get('pid')} no longer holds the lock file)"
        if me["pid_ns"] and holder.get("pid_ns") == me["pid_ns"] and not _pid_alive(holder.get("pid")):
            return f"pid {holder.get('pid')} is not running"
        if flock_free is not None:
            return None  # the flock is held by a live process: live, whatever the heartbeat says
    age = _age_s(holder.get("heartbeat"))
    if age > stale_after_s:
        return f"its heartbeat is {age:.0f} s old (more than {stale_after_s:.0f} s)"
    return None


def _describe(holder: dict[str, Any]) -> str:
    return (f"{holder.get('description')!r} (pid {holder.get('pid')} on host {holder.get('host')}, "
            f"started {holder.get('started')}, owner {holder.get('owner')})")


@dataclass
class _Held:
    """One acquired lock of this process: what `release` needs, and the nesting count."""

    key: tuple[int, str]
    lock_uri: str
    record: dict[str, Any]
    fd: int | None = None  # local: the lock file, open and flocked for the lock's lifetime
    etag: str | None = None  # S3: the ETag of our last write, for If-Match
    count: int = 1
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    lost: bool = False


_REGISTRY: dict[tuple[int, str], _Held] = {}
_REGISTRY_LOCK = threading.RLock()


def _forget_in_child() -> None:
    # A fork child inherits our lock file descriptors; closing them keeps it from holding the flock
    # after we exit (our own descriptors are unaffected). The child holds no lock of its own, and
    # gets a fresh registry lock (another thread may have held ours at the instant of the fork).
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.RLock()
    for held in _REGISTRY.values():
        if held.fd is not None:
            try:
                os.close(held.fd)
            except OSError:
                pass
    _REGISTRY.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class WorkDirLock:
    """Exclusive use of a work directory (local folder or s3:// prefix) by one pipeline run.

    `with WorkDirLock(work_dir, description="llmpipe run demo"):` acquires on entry, raising
    `WorkDirBusy` at once when another live run holds it, and releases on exit (deleting the lock file
    only while it is still ours). Stale locks are taken over (see the module docstring); nested use in
    one process only counts. `description` defaults to the command line.
    """

    def __init__(self, work_dir: str, description: str | None = None, stale_after_s: float = 600.0,
                 heartbeat_s: float = 30.0):
        if heartbeat_s >= stale_after_s:
            raise ValueError(f"heartbeat_s ({heartbeat_s}) must be shorter than stale_after_s ({stale_after_s})")
        self.work_dir = work_dir.rstrip("/") if storage.is_s3(work_dir) else storage.absolute(work_dir)
        self.lock_uri = storage.join(self.work_dir, LOCK_NAME)
        self.description = description or shlex.join(sys.argv)[:300] or f"python pid {os.getpid()}"
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self._depth = 0  # acquisitions through this object

    def __enter__(self) -> "WorkDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._depth > 0

    def acquire(self) -> None:
        """Take the lock, or count one more nesting level when this process holds it already."""
        key = (os.getpid(), self.work_dir)
        with _REGISTRY_LOCK:
            held = _REGISTRY.get(key)
            if held is not None:
                held.count += 1
            else:
                record = {"owner": uuid.uuid4().hex, "pid": os.getpid(), **_machine(), "started": _now(),
                          "heartbeat": _now(), "description": self.description}
                held = _Held(key=key, lock_uri=self.lock_uri, record=record)
                if storage.is_s3(self.work_dir):
                    held.etag = self._acquire_s3(record)
                else:
                    held.fd = self._acquire_local(record)
                held.thread = threading.Thread(target=self._heartbeat, args=(held,), daemon=True,
                                               name=f"workdir-lock-heartbeat {self.work_dir}")
                held.thread.start()
                _REGISTRY[key] = held
        self._depth += 1

    def release(self) -> None:
        """Undo one `acquire`; the last one stops the heartbeat and removes the lock file if ours."""
        if self._depth == 0:
            raise RuntimeError(f"{self.lock_uri}: released more often than acquired")
        self._depth -= 1
        with _REGISTRY_LOCK:
            held = _REGISTRY.get((os.getpid(), self.work_dir))
            if held is None:
                return
            held.count -= 1
            if held.count > 0:
                return
            del _REGISTRY[held.key]
        held.stop.set()
        if held.thread is not None:
            held.thread.join()
        if held.fd is not None:
            self._release_local(held)
        else:
            self._release_s3(held)

    # ------------------------------------------------------------------------------------ local

    def _acquire_local(self, record: dict[str, Any]) -> int:
        path = Path(self.lock_uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        me = _machine()
        holder: dict[str, Any] = {}
        for _ in range(_ATTEMPTS):
            fd = _create_local(path, record)
            if fd is not None:
                return fd
            seen = _inspect_local(path)
            if seen is None:
                continue  # released between our create and our look: try again
            holder, ino, flock_free = seen
            if _stale_reason(holder, me, self.stale_after_s, flock_free) is None:
                raise WorkDirBusy(self.work_dir, self.lock_uri, holder)
            with _folder_guard(path.parent):
                fd = self._take_over_local(path, record, me)
            if fd is not None:
                return fd
        raise WorkDirBusy(self.work_dir, self.lock_uri, holder)

    def _take_over_local(self, path: Path, record: dict[str, Any], me: dict[str, str]) -> int | None:
        """Replace a stale lock; called under the folder guard, so no other takeover or release runs."""
        # Look again under the guard: another process may have taken it over since our first look.
        seen = _inspect_local(path)
        if seen is None:
            return _create_local(path, record)
        holder, ino, flock_free = seen
        reason = _stale_reason(holder, me, self.stale_after_s, flock_free)
        if reason is None:
            raise WorkDirBusy(self.work_dir, self.lock_uri, holder)
        # Move it aside under a unique name and check that what moved is the file judged stale: a
        # plain create (which needs no guard) may have put a new lock there after the owner released.
        aside = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return None
        if os.stat(aside).st_ino != ino:
            try:
                os.link(aside, path)  # put the live lock back, unless yet another one is there now
            except FileExistsError:
                log.error("%s: a new lock appeared while a stale one was replaced; lock file kept as %s",
                          self.lock_uri, aside)
                return None
            os.unlink(aside)
            return None
        os.unlink(aside)
        log.warning("%s: taking over the stale lock of %s: %s", self.lock_uri, _describe(holder), reason)
        return _create_local(path, record)

    def _release_local(self, held: _Held) -> None:
        path = Path(held.lock_uri)
        try:
            with _folder_guard(path.parent):
                try:
                    ours = os.stat(path).st_ino == os.fstat(held.fd).st_ino
                except FileNotFoundError:
                    ours = False
                if ours:
                    os.unlink(path)  # before the fd closes: nobody can take it over in between
                else:
                    log.warning("%s: the lock was taken over by another run before this one ended", held.lock_uri)
        finally:
            os.close(held.fd)

    # --------------------------------------------------------------------------------------- S3

    def _acquire_s3(self, record: dict[str, Any]) -> str:
        me = _machine()
        holder: dict[str, Any] = {}
        data = _encode(record)
        for _ in range(_ATTEMPTS):
            etag = conditional_writes.put_conditional(self.lock_uri, data, if_none_match=True)
            if etag is not None:
                return etag
            try:
                body, seen_etag = conditional_writes.read_tagged(self.lock_uri)
            except FileNotFoundError:
                continue  # released in between
            holder = _decode(body) or {"description": "unreadable lock file", "unreadable": True}
            reason = _stale_reason(holder, me, self.stale_after_s, None)
            if reason is None:
                raise WorkDirBusy(self.work_dir, self.lock_uri, holder)
            # If-Match: only one of several racing takers replaces this exact version.
            etag = conditional_writes.put_conditional(self.lock_uri, data, if_match=seen_etag)
            if etag is not None:
                log.warning("%s: taking over the stale lock of %s: %s", self.lock_uri, _describe(holder), reason)
                return etag
        raise WorkDirBusy(self.work_dir, self.lock_uri, holder)

    def _release_s3(self, held: _Held) -> None:
        if held.lost or not conditional_writes.delete_if_match(held.lock_uri, held.etag):
            log.warning("%s: the lock was taken over by another run before this one ended", held.lock_uri)

    # -------------------------------------------------------------------------------- heartbeat

    def _heartbeat(self, held: _Held) -> None:
        while not held.stop.wait(self.heartbeat_s):
            try:
                held.record["heartbeat"] = _now()
                data = _encode(held.record)
                if held.fd is not None:
                    _rewrite(held.fd, data)
                    continue
                etag = conditional_writes.put_conditional(held.lock_uri, data, if_match=held.etag)
                if etag is None:
                    # Our heartbeat stalled long enough for another run to judge us dead.
                    held.lost = True
                    log.error("%s: this run's lock was taken over by another run; stop one of them",
                              held.lock_uri)
                    return
                held.etag = etag
            except Exception as exc:  # a missed beat is not fatal; the next one may get through
                log.warning("%s: heartbeat failed: %s", held.lock_uri, exc)


def _encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")


def _decode(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _rewrite(fd: int, data: bytes) -> None:
    # In place, not temp + rename: the flock belongs to this inode. The record keeps its length
    # (fixed-width times), so a reader sees the old bytes or the new ones in practice, and retries
    # when it does not.
    os.pwrite(fd, data, 0)
    if os.fstat(fd).st_size != len(data):
        os.ftruncate(fd, len(data))


def _create_local(path: Path, record: dict[str, Any]) -> int | None:
    """Create the lock file if absent and return its descriptor, flocked; None if it exists.

    The record is written and flocked in a private temp file (created with O_CREAT|O_EXCL) that is
    then hard-linked to the lock name: `link` fails on an existing name exactly as O_CREAT|O_EXCL
    does, and the lock file is never seen empty or unlocked, so a reader can trust a free flock."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, _encode(record))
        os.fsync(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            os.close(fd)
            return None
        return fd
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _inspect_local(path: Path) -> tuple[dict[str, Any], int, bool] | None:
    """(record, inode, flock free) of the lock file at `path`; None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        ino = os.fstat(fd).st_ino
        try:
            # Shared, not exclusive: enough to see whether the holder's exclusive flock is there,
            # and possible on a read-only descriptor.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            flock_free = True
        except BlockingIOError:
            flock_free = False
        record = None
        for _ in range(3):  # a heartbeat rewrite may be under way
            record = _decode(os.pread(fd, 1 << 16, 0))
            if record is not None:
                break
            time.sleep(0.05)
        return record or {"description": "unreadable lock file", "unreadable": True}, ino, flock_free
    finally:
        os.close(fd)  # also drops our shared flock


class _folder_guard:
    """An exclusive flock on the work directory itself, held for the few system calls of a takeover
    or a release so they never interleave. Bounded: a holder stuck for long is an error, not a wait."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.fd: int | None = None

    def __enter__(self) -> "_folder_guard":
        try:
            self.fd = self._lock(os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY))
        except OSError as exc:
            if exc.errno not in (errno.EBADF, errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            # Filesystems that cannot flock a directory (NFS maps flock to POSIX locks, which need a
            # file open for writing): a guard file. It is never deleted: deleting a flock file
            # would let two processes lock two different inodes of the same name.
            self.fd = self._lock(os.open(self.folder / f"{LOCK_NAME}.guard", os.O_RDWR | os.O_CREAT, 0o644))
        return self

    def _lock(self, fd: int) -> int:
        deadline = time.monotonic() + _GUARD_TIMEOUT_S
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.folder}: another process has held the lock guard for "
                                           f"more than {_GUARD_TIMEOUT_S:.0f} s") from None
                    time.sleep(0.01)
        except BaseException:
            os.close(fd)
            raise

    def __exit__(self, *exc_info) -> None:
        os.close(self.fd)
