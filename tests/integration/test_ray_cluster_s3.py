"""A real two-node Ray cluster on this machine (both nodes on loopback, the second with a `node2`
resource of its own and no AWS_* variables at all) running the data stages on s3:// against the local
S3 endpoint: the driver's credentials reach the tasks on every node through the job's runtime_env,
never through a node's environment, and never appear in any output or Ray log.

Both nodes are `ray start --block` processes stopped by their PIDs (never a global `ray stop`, which
would stop every Ray on the machine), with temp dirs of their own under a short path (Ray's Unix
sockets live there, and a socket path must stay under 108 bytes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.conftest import free_port, stop, wait_for_port
from tests.integration.ray_cluster_driver import stage_overrides
from tests.integration.test_sockets_loopback import is_loopback, listening

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).with_name("ray"))
# What a node must not inherit from the test's environment: it sees only what the job forwards.
NOT_ON_NODES = ("AWS_", "MLFLOW_", "LLMPIPE_", "RAY_ADDRESS")


def _node_args(temp_dir: Path) -> list[str]:
    # Every port Ray would otherwise take from a fixed default (shared with other Rays on the machine)
    # is a free one; the rest are random already.
    ports = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
    return ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", "80000000",
            "--disable-usage-stats", "--block", "--temp-dir", str(temp_dir),
            *[a for p in ports for a in (p, str(free_port()))]]


def _stop_node(proc: subprocess.Popen) -> None:
    """What `ray stop` does, for this node's processes only (found by PID from its `ray start`):
    SIGTERM to all of them at once, SIGKILL to any still there after a grace period."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        try:
            member.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=5)
    for member in alive:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    stop(proc)


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node with resource `node2`, one CPU each: yields (the head's address,
    what a driver needs in its environment to join, the nodes' temp folder, the two `ray start` processes)."""
    base = Path(tempfile.mkdtemp(prefix="llrc", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(NOT_ON_NODES)}
    # Ray 2.60 turns token authentication on for a `ray start --head`; every process of the cluster,
    # drivers included, then needs the token. One of the test's own, in no file.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex, RAY_USAGE_STATS_ENABLED="0",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    port = free_port()
    procs = []
    try:
        with open(base / "head.log", "wb") as log:
            procs.append(subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--include-dashboard",
                                           "false", *_node_args(base / "h")], env=env, stdout=log,
                                          stderr=subprocess.STDOUT))
        wait_for_port(port, procs[0], timeout=90)
        # Plain `ray start --address` refuses to add a node with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and
        # with it on, Ray moves 127.0.0.1 to the machine's outward address: see ray_loopback_node.
        with open(base / "node2.log", "wb") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "tests.integration.ray_loopback_node", "start",
                                           "--address", f"127.0.0.1:{port}", "--resources", '{"node2": 1}',
                                           *_node_args(base / "n")], env=env, cwd=REPO, stdout=log,
                                          stderr=subprocess.STDOUT))
        yield f"127.0.0.1:{port}", {k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}, base, procs
    finally:
        for proc in reversed(procs):
            _stop_node(proc)
        shutil.rmtree(base, ignore_errors=True)


def _drive(cluster, *args: str, secret: str) -> dict:
    """Run the driver with the test's environment plus a distinctive secret key; returns its result
    after checking the secret is nowhere in its output or in the cluster's logs."""
    address, ray_env, base, _ = cluster
    env = {**os.environ, **ray_env, "AWS_SECRET_ACCESS_KEY": secret}
    done = subprocess.run([sys.executable, "-m", "tests.integration.ray_cluster_driver", args[0], address, *args[1:]],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert secret not in output
    for path in base.rglob("*"):
        if path.is_file() and not path.is_socket():
            assert secret.encode() not in path.read_bytes(), f"the secret key is in {path}"
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _secret() -> str:
    return f"llmpipe-secret-{uuid.uuid4().hex}"


def test_tasks_and_train_workers_on_the_second_node_get_credentials_from_the_job_not_the_node(
        cluster, s3_endpoint, tmp_path):
    import hashlib

    from llm import storage

    storage.write_text("s3://llmpipe-test/probe.txt", "seen from node2")
    got = _drive(cluster, "probe", "s3://llmpipe-test/probe.txt", "s3://llmpipe-test/train-probe.json",
                 str(tmp_path / "ray-train"), secret=_secret())
    for seen in (got["task"], got["train"]):  # a Ray task, and a Ray Train worker
        assert seen["node"] == got["node2"] and seen["parent"] == "raylet"
        assert seen["node_env"] == []  # the node itself has no AWS_*, MLFLOW_* or LLMPIPE_* at all
        assert seen["seen"] == {"AWS_ACCESS_KEY_ID": True, "AWS_SECRET_ACCESS_KEY": True,
                                "AWS_DEFAULT_REGION": True, "AWS_ENDPOINT_URL": True}
        assert seen["s3_sha256"] == hashlib.sha256(b"seen from node2").hexdigest()


def test_data_stages_on_two_nodes_write_what_one_machine_writes(cluster, s3_endpoint, shared_data):
    from llm import storage, versions
    from llm.config import build_config
    from llm.data.exact_dedup import run_exact_dedup
    from llm.data.ingest import run_ingest
    from llm.data.minhash.stage import run_minhash_dedup
    from llm.data.reshard import run_reshard
    from llm.tokenizer.tokenize import run_tokenize
    from llm.executor import LocalExecutor
    from llm.layout import Layout
    from llm.tokenizer.stage import run_tokenizer_training

    raw = "s3://llmpipe-test/raw"
    for name in ["iana.warc.gz", "example.warc.gz", "example2.warc.gz", "example-wpull.warc.gz"]:
        storage.upload_file(str(shared_data / "warc" / name), f"{raw}/{name}")
    started = time.monotonic()
    got = _drive(cluster, "stages", "s3://llmpipe-test/cluster", raw, secret=_secret())
    cluster_s = time.monotonic() - started

    # Work went to both nodes, the second among them.
    assert got["node2"] in got["nodes"] and len(got["nodes"]) == 2, got["nodes"]
    # Complete: every stage's version is current in S3, with its shards and the documents accounted for.
    work = "s3://llmpipe-test/cluster"
    layout = Layout.for_work_dir(work)
    for name, version in got["versions"].items():
        assert versions.current(getattr(layout, name)) == version, name
    docs = got["totals"]["docs"]["counts"]
    assert docs["kept"] >= 15 and docs["read"] == docs["kept"] + sum(docs["dropped"].values()) + docs["quarantined"]
    bins = storage.list_files(layout.tokens, ".bin")
    assert bins and all(u.startswith(f"{work}/tokens/") for u in bins)
    assert sum(got["tokens"].values()) > 1000

    # The same stages on one machine (in this process) make the same versions: same outputs, same records.
    cfg = build_config({}, stage_overrides("s3://llmpipe-test/local", raw))
    local, ex = Layout.for_work_dir(cfg.work_dir), LocalExecutor()
    made = {
        "docs": run_ingest(cfg, "", local.docs, ex),
        "dedup": run_exact_dedup(local.docs, local.dedup, cfg.data.exact_dedup, cfg.data.shard, ex),
        "near_dedup": run_minhash_dedup(local.dedup, local.near_dedup, cfg.data.minhash, cfg.data.shard, ex),
        "shards": run_reshard(local.near_dedup, local.shards, cfg.data.shard, ex),
        "tokenizer": run_tokenizer_training(local.shards, local.tokenizer, cfg.tokenizer, ex),
        "tokens": run_tokenize(local.shards, local.tokenizer, local.tokens, cfg.tokenize, ex),
    }
    assert {k: m["version"] for k, m in made.items()} == got["versions"]
    assert made["tokens"]["tokens"]["totals"] == got["tokens"]
    for uri in bins:
        rel = storage.relative(uri, layout.tokens)
        assert storage.read_bytes(storage.join(local.tokens, rel)) == storage.read_bytes(uri), rel
    print(f"cluster run {cluster_s:.1f}s")

    # Both nodes' servers, agents and workers listen on loopback only.
    import psutil

    sockets = {a: n for proc in cluster[3] for a, n in listening(psutil.Process(proc.pid)).items()}
    assert len({pid for _, pid in sockets.values()}) >= 4, sockets  # GCS, two raylets, agents at least
    assert all(is_loopback(ip) for ip, _ in sockets), {a: n for a, n in sockets.items() if not is_loopback(a[0])}
