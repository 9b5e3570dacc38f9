"""Running the `llmpipe data` command on a tiny config against the local text site, for the tests that
compare whole work directories: the command line, its environment, a Prefect server for many runs,
and stopping a run's whole process tree by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.integration.conftest import free_port, stop, wait_for_port
from tests.text_site import pinned_clock_env

LLMPIPE = str(Path(sys.executable).with_name("llmpipe"))

# Small enough to run in 10-20 s on 2 cores, big enough that every stage has several shards: seven
# WARC files, four code shards, three output shards and token files.
TINY = [
    "name=tiny",
    "data.crawl.records_per_warc=3",
    "data.crawl.backoff_s=0.01",
    "data.sources=[{kind: crawl, name: web}, {kind: code, name: code, max_files: 8, files_per_shard: 2}]",
    "data.shard.target_bytes=8000",
    "tokenizer.vocab_size=512",
    "tokenizer.sample_bytes=200000",
    "tracking.enabled=false",
    "ray.num_cpus=2",
    "ray.object_store_memory=100000000",
]


def data_command(site: str, work: Path) -> list[str]:
    """`llmpipe data` for the tiny config, crawling `site`, into `work`."""
    return [LLMPIPE, "data", *TINY, f"data.crawl.start_url={site}", f"work_dir={work}"]


def run_env(tmp_path: Path, prefect_api: str | None = None) -> dict[str, str]:
    """The command's environment: a pinned crawl clock, a Prefect home of the test's own, and the
    Prefect server `prefect_api` (None: each run starts its temporary API)."""
    env = pinned_clock_env(tmp_path / "pinned_clock")
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    env.pop("PREFECT_API_URL", None)
    if prefect_api:
        env["PREFECT_API_URL"] = prefect_api
    return env


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A Prefect server on loopback (the API alone: no UI, no background services); yields its API URL.
    For many runs in a row: each saves the several seconds a temporary API takes to start."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "server.log", "wb") as log:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
                                 "127.0.0.1", "--port", str(port), "--no-ui", "--no-services"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, proc, timeout=120)
            api = f"http://127.0.0.1:{port}/api"
            _wait_healthy(api, proc)
            yield api
        finally:
            stop(proc)


def _wait_healthy(api: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the Prefect server at {api} is not healthy")
        time.sleep(0.1)


def run_to_completion(cmd: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the command; fail with the end of its output unless it exits 0."""
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd[1]} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time in clock ticks) of every process now running."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid` (children, theirs, ...): pid -> start time, to tell a reused pid apart."""
    table = _process_table()
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, started) in table.items():
            if ppid == parent and child not in found:
                found[child] = started
                todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the command and every process it started (Ray, the temporary Prefect server), by PID:
    what the machine losing the run looks like. A process already gone, or whose pid now belongs to
    another process, is left alone."""
    below = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for pid, started in below.items():
        if _process_table().get(pid, (None, None))[1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_process_table().get(p, (None, None))[1] == s for p, s in below.items()):
        time.sleep(0.05)
