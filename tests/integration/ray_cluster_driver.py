"""A driver process for the two-node Ray cluster tests: it joins the cluster the way `llmpipe` does
(`ray.address` -> `ensure_ray`), does one thing, and prints one JSON line of what it saw.

    python -m tests.integration.ray_cluster_driver probe  ADDRESS S3_OBJECT S3_OUT TRAIN_STORAGE
    python -m tests.integration.ray_cluster_driver stages ADDRESS WORK_DIR RAW_URI

A process of its own: the test process may already hold a local Ray (`ensure_ray` reuses a running one).
"""

from __future__ import annotations

import json
import os
import sys
import time

import cloudpickle

# The probe below runs on the cluster's workers, which need not import the tests package: ship it by
# value (functions of `__main__` always are).
if __name__ != "__main__":
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

CHECKED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")


def _join(address: str):
    import ray

    from llm.cluster import ensure_ray
    from llm.config import RayConfig

    ensure_ray(RayConfig(address=address))
    deadline = time.monotonic() + 90
    while not ray.cluster_resources().get("node2"):  # the second node registers after the head
        if time.monotonic() > deadline:
            raise TimeoutError("the second Ray node did not join")
        time.sleep(0.2)
    return ray


def _node2(ray) -> str:
    return next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("node2"))


def _probe(s3_object: str) -> dict:
    """On a worker: what it sees of the forwarded variables and of its node's own environment (the
    raylet that started it), and whether S3 answers it."""
    import hashlib

    import ray

    from llm import storage

    with open(f"/proc/{os.getppid()}/environ", "rb") as fh:
        names = [e.split(b"=", 1)[0].decode() for e in fh.read().split(b"\0") if e]
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
        parent = os.path.basename(fh.read().split(b"\0")[0].decode())
    return {
        "node": ray.get_runtime_context().get_node_id(),
        "parent": parent,
        "node_env": sorted(n for n in names if n.startswith(("AWS_", "MLFLOW_", "LLMPIPE_"))),
        "seen": {k: os.environ.get(k) for k in CHECKED},
        "s3_sha256": hashlib.sha256(storage.read_bytes(s3_object)).hexdigest(),
    }


def _train_probe(config: dict) -> None:
    """A Ray Train worker: writes what `_probe` sees to S3, with the credentials it was forwarded."""
    from llm import storage

    storage.write_text(config["out"], json.dumps(_probe(config["s3_object"])))


def probe(address: str, s3_object: str, train_out: str, storage_path: str) -> dict:
    """What a task and a Ray Train worker placed on the second node see."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from llm import storage

    ray = _join(address)
    seen = ray.get(ray.remote(num_cpus=1, resources={"node2": 1})(_probe).remote(s3_object))
    TorchTrainer(_train_probe, train_loop_config={"out": train_out, "s3_object": s3_object},
                 scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1, "node2": 1}),
                 run_config=RunConfig(name="probe", storage_path=storage_path)).fit()
    trained = json.loads(storage.read_text(train_out))
    # Compared here, so the test's output never holds the secret.
    for got in (seen, trained):
        got["seen"] = {k: got["seen"][k] == os.environ.get(k) for k in CHECKED}
    return {"task": seen, "train": trained, "node2": _node2(ray)}


def stages(address: str, work_dir: str, raw: str) -> dict:
    """ingest .. tokenize on the cluster, every shard task on whichever node has a free CPU."""
    from llm.config import build_config
    from llm.data.exact_dedup import run_exact_dedup
    from llm.data.ingest import run_ingest
    from llm.data.minhash.stage import run_minhash_dedup
    from llm.data.reshard import run_reshard
    from llm.tokenizer.tokenize import run_tokenize
    from llm.executor import RayExecutor
    from llm.layout import Layout
    from llm.tokenizer.stage import run_tokenizer_training

    cfg = build_config({}, stage_overrides(work_dir, raw) + [f"ray.address={address}"])
    ray = _join(cfg.ray.address)
    layout = Layout.for_work_dir(cfg.work_dir)
    ex = RayExecutor(ray_config=cfg.ray)
    manifests = {
        "docs": run_ingest(cfg, "", layout.docs, ex),
        "dedup": run_exact_dedup(layout.docs, layout.dedup, cfg.data.exact_dedup, cfg.data.shard, ex),
        "near_dedup": run_minhash_dedup(layout.dedup, layout.near_dedup, cfg.data.minhash, cfg.data.shard, ex),
        "shards": run_reshard(layout.near_dedup, layout.shards, cfg.data.shard, ex),
        "tokenizer": run_tokenizer_training(layout.shards, layout.tokenizer, cfg.tokenizer, ex),
        "tokens": run_tokenize(layout.shards, layout.tokenizer, layout.tokens, cfg.tokenize, ex),
    }
    return {"nodes": dict(ex.nodes), "node2": _node2(ray),
            "versions": {k: m["version"] for k, m in manifests.items()},
            "totals": {k: m.get("totals") for k, m in manifests.items()},
            "tokens": manifests["tokens"]["tokens"]["totals"]}


def stage_overrides(work_dir: str, raw: str) -> list[str]:
    """The small data config both the cluster run and the test's own local run use."""
    return [
        f"work_dir={work_dir}",
        f"data.sources=[{{kind: warc, name: web, uri: '{raw}', glob: '*.warc.gz'}}]",
        "data.shard.target_bytes=20000",
        "tokenizer.vocab_size=800",
        # the sample archives' pages, whatever their language or quality: the test is about where work runs
        "data.quality.enabled=false", "data.langid.enabled=false",
        "tracking.enabled=false",
    ]


def main(argv: list[str]) -> None:
    mode, *args = argv
    result = {"probe": probe, "stages": stages}[mode](*args)
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
