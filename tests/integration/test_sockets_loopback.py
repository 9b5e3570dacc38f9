"""A local pretrain listens on loopback only: Ray's servers, its agents and workers, and the torch
process group (TCPStore rendezvous, gloo) of the Ray Train workers."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter of its own, so it starts its own local Ray (not the session's), with Ray
# imported before the library sets anything up, as a user's script might.
PRETRAIN = """
import sys
import ray  # noqa: F401
from llm.cluster import ensure_ray
from llm.config import ModelConfig, RayConfig, TrainConfig
from llm.train.data import write_token_dataset
from llm.train.trainer import pretrain
from tests.unit.train.tiny import VOCAB, counting_docs

tokens, out = sys.argv[1], sys.argv[2]
write_token_dataset(tokens, {"train": counting_docs(100, 0), "val": counting_docs(20, 1)}, vocab_size=VOCAB)
ensure_ray(RayConfig(num_cpus=2, object_store_memory=128 * 1024 * 1024))
pretrain(ModelConfig(layers=1, hidden_size=16, attention_heads=2, context_length=16),
         TrainConfig(num_workers=2, batch_size=4, micro_batch_size=2, max_steps=300, warmup_steps=1,
                     eval_every=300, eval_batches=1, checkpoint_every=300, log_every=100), tokens, out)
"""


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8 and ::1, also as an IPv4-mapped IPv6 address (a dual-stack socket bound to 127.0.0.1)."""
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def listening(root: psutil.Process) -> dict[tuple[str, int], tuple[str, int]]:
    """LISTEN sockets of `root` and all its descendants: (address, port) -> (process name, pid). One read of
    the system's socket table per call keeps a sample short while the run goes on."""
    try:
        tree = {p.pid: p for p in (root, *root.children(recursive=True))}
    except psutil.NoSuchProcess:
        return {}
    found = {}
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in tree:
            found[(conn.laddr.ip, conn.laddr.port)] = (_name(tree[conn.pid]), conn.pid)
    return found


def titles(root: psutil.Process) -> dict[int, str]:
    """pid -> title of `root`'s descendants now."""
    try:
        return {p.pid: _name(p) for p in root.children(recursive=True)}
    except psutil.NoSuchProcess:
        return {}


def _name(proc: psutil.Process) -> str:
    # Ray workers set their title (`ray::RayTrainWorker`) as their command line.
    try:
        cmdline = proc.cmdline()
        return cmdline[0] if cmdline and cmdline[0].startswith("ray::") else proc.name()
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return "?"


def test_local_pretrain_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    log = open(tmp_path / "pretrain.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", PRETRAIN, str(tmp_path / "tokens"), str(tmp_path / "out")],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    seen: dict[tuple[str, int], tuple[str, int]] = {}
    names: dict[int, set[str]] = {}  # every title each process of the run had
    try:
        driver = psutil.Process(proc.pid)
        deadline = time.time() + 180
        # Sampled until the run ends, so the process group's sockets, open only while the Ray Train
        # workers train, are among those seen.
        while proc.poll() is None and time.time() < deadline:
            seen.update(listening(driver))
            for pid, name in titles(driver).items():  # a worker is titled IDLE until Ray Train takes it
                names.setdefault(pid, set()).add(name)
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
    output = (tmp_path / "pretrain.log").read_text(errors="replace")
    assert proc.returncode == 0, output[-3000:]
    assert (tmp_path / "out" / "final" / "model.pt").exists()
    assert seen, "no listening socket was seen during the run"
    # A training worker listens with Ray's RPC server all its life; more sockets than that are its
    # process group's (the rendezvous store, gloo), open only while it trains.
    per_worker = Counter(pid for name, pid in seen.values()
                         if any("RayTrainWorker" in n for n in names.get(pid, set()) | {name}))
    assert per_worker and max(per_worker.values()) >= 2, seen
    outward = {f"{ip}:{port}": f"{name} (pid {pid})" for (ip, port), (name, pid) in seen.items()
               if not is_loopback(ip)}
    assert outward == {}
