"""WorkDirLock on an s3:// work directory, against moto_server on 127.0.0.1 and real other processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import pytest

from llm import conditional_writes, storage
from llm.workdir_lock import LOCK_NAME, WorkDirBusy, WorkDirLock
from tests.unit.test_workdir_lock import finish, race, run_child, stamp, start_child

pytestmark = pytest.mark.integration

WORK = "s3://llmpipe-test/work"
LOCK = f"{WORK}/{LOCK_NAME}"
OTHER_HOST = {"host": "other-host", "boot_id": "another-kernel", "pid_ns": "pid:[1]", "pid": 4242}


def put_record(**fields) -> dict:
    record = {"owner": "f" * 32, "started": stamp(3600), "heartbeat": stamp(3600), "description": "old run"}
    record.update(fields)
    storage.write_text(LOCK, json.dumps(record))
    return record


def lock_record() -> dict:
    return json.loads(storage.read_text(LOCK))


def test_the_endpoint_honours_conditional_creates(s3_endpoint):
    """The lock relies on If-None-Match: * being enforced (not ignored) by the store."""
    assert conditional_writes.conditional_writes(LOCK)
    assert conditional_writes.create_exclusive(f"{WORK}/x", b"first") is True
    assert conditional_writes.create_exclusive(f"{WORK}/x", b"second") is False
    assert storage.read_bytes(f"{WORK}/x") == b"first"
    assert storage.list_files(WORK) == [f"{WORK}/x"]  # the probe object was removed


def test_second_process_is_refused_and_release_deletes_the_lock(s3_endpoint):
    with WorkDirLock(WORK, description="llmpipe run demo"):
        record = lock_record()
        code, line = run_child(WORK)
    assert record["pid"] == os.getpid()
    assert code == 3 and f"pid {os.getpid()} " in line and "'llmpipe run demo'" in line and LOCK in line
    assert not storage.exists(LOCK)
    assert run_child(WORK)[0] == 0


def test_a_lock_left_by_a_sigkilled_process_on_this_machine_is_recovered(s3_endpoint, caplog):
    child = start_child(WORK, "hold")
    try:
        assert child.stdout.readline().startswith("won")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
        assert lock_record()["pid"] == child.pid  # left behind, heartbeat still fresh
        with caplog.at_level(logging.WARNING, logger="llm.workdir_lock"):
            with WorkDirLock(WORK):
                assert lock_record()["pid"] == os.getpid()
        assert f"pid {child.pid} is not running" in caplog.text
    finally:
        finish(child)


def test_another_hosts_lock_is_taken_over_only_when_its_heartbeat_is_old(s3_endpoint):
    put_record(heartbeat=stamp(5), **OTHER_HOST)
    with pytest.raises(WorkDirBusy, match="pid 4242 on host other-host"):
        WorkDirLock(WORK).acquire()
    put_record(heartbeat=stamp(700), **OTHER_HOST)
    with WorkDirLock(WORK, stale_after_s=600):
        assert lock_record()["pid"] == os.getpid()
    assert not storage.exists(LOCK)


def test_processes_racing_for_a_stale_lock_exactly_one_wins(s3_endpoint, tmp_path):
    for round_ in range(3):
        put_record(heartbeat=stamp(7200), **OTHER_HOST)
        lines = race(WORK, tmp_path, racers=4, tag=str(round_))
        winners = [line for line in lines if line.startswith("won ")]
        assert len(winners) == 1, lines
        assert all(f"pid {winners[0].split()[1]} " in line for line in lines if line.startswith("busy ")), lines
        assert not storage.exists(LOCK)


def test_heartbeat_and_release_do_not_touch_a_lock_taken_over_by_another_run(s3_endpoint, caplog):
    lock = WorkDirLock(WORK, heartbeat_s=0.2, stale_after_s=5)
    lock.acquire()
    first = lock_record()
    time.sleep(1.5)
    assert lock_record()["heartbeat"] > first["heartbeat"]  # the heartbeat rewrites the object
    theirs = put_record(owner="a" * 32, description="the other run", **OTHER_HOST)  # a takeover
    with caplog.at_level(logging.WARNING, logger="llm.workdir_lock"):
        time.sleep(0.6)  # the next heartbeat's If-Match fails: it must not overwrite
        lock.release()
    assert lock_record() == theirs
    assert "taken over" in caplog.text


def test_stores_without_conditional_writes_fall_back_to_check_write_read_back(s3_endpoint, monkeypatch):
    """The same endpoint with the probe's answer forced to 'unsupported', to run the emulation."""
    client = storage._s3_client()
    monkeypatch.setitem(conditional_writes._conditional_support, (client.meta.endpoint_url, "llmpipe-test"), False)
    assert not conditional_writes.conditional_writes(LOCK)
    tag = conditional_writes.put_conditional(f"{WORK}/x", b"1", if_none_match=True)
    assert tag and conditional_writes.put_conditional(f"{WORK}/x", b"2", if_none_match=True) is None
    assert conditional_writes.put_conditional(f"{WORK}/x", b"3", if_match='"not-the-etag"') is None
    assert conditional_writes.delete_if_match(f"{WORK}/x", '"not-the-etag"') is False
    assert storage.read_bytes(f"{WORK}/x") == b"1" and conditional_writes.delete_if_match(f"{WORK}/x", tag)

    put_record(heartbeat=stamp(5), **OTHER_HOST)
    with pytest.raises(WorkDirBusy, match="pid 4242 on host other-host"):
        WorkDirLock(WORK).acquire()
    put_record(heartbeat=stamp(700), **OTHER_HOST)
    with WorkDirLock(WORK):
        assert lock_record()["pid"] == os.getpid()
    assert not storage.exists(LOCK)
