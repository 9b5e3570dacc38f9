"""Every parallel strategy trains like DDP: same per-step loss and gradient norm, same final weights.

Two processes on gloo run ddp, fsdp (also with activation checkpointing), tp, pp (GPipe and 1F1B) one
after another in one process group; four processes run the fsdp+tp and ddp+pp hybrids. Dropout is off
so that all runs see the same math.

Tolerance: all runs are fp32 and differ only in the order of floating-point sums (TP splits each matmul's
reduction across ranks, FSDP reduce-scatters, pipelining splits the batch into micro-batches): fp32's
2^-24 = 6e-8 relative per operation, measured at most 2.4e-7 nats on the loss and 1.2e-7 on any weight
after four steps. The bound 1e-5 leaves 40x room for other kernels or thread counts; a real bug (a
missing gradient sync, a wrong tied-weight sum, a norm counted twice, a wrong qkv shard) moves the loss
by 1e-3 or more already at the first step.
"""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llm.train.checkpoint import load_model
from llm.train.loop import checkpoint_to, train
from tests.unit.train.tiny import tiny_model, tiny_train

# gradient_clipping 0.5 is below the early gradient norms, so clipping is active and must be right.
CFG = dict(max_steps=4, checkpoint_every=4, eval_every=4, log_every=1, batch_size=8, micro_batch_size=2,
           gradient_clipping=0.5)
TWO = {
    "ddp": dict(strategy="ddp"),
    "fsdp": dict(strategy="fsdp"),
    "tp": dict(strategy="tp", tensor_parallel=2),
    "pp-gpipe": dict(strategy="pp", pipeline_parallel=2, pipeline_schedule="gpipe"),
    "pp-1f1b": dict(strategy="pp", pipeline_parallel=2, pipeline_schedule="1f1b"),
    "fsdp-checkpointed": dict(strategy="fsdp", activation_checkpointing=1),
    "ddp-bf16": dict(strategy="ddp", precision="bf16"),
    "fsdp-bf16": dict(strategy="fsdp", precision="bf16"),
    "pp-bf16": dict(strategy="pp", pipeline_parallel=2, precision="bf16"),
}
BF16 = ("fsdp-bf16", "pp-bf16")
FOUR = {
    "fsdp+tp": dict(strategy="fsdp+tp", tensor_parallel=2),
    "ddp+pp": dict(strategy="ddp+pp", pipeline_parallel=2),
}
TOL = 1e-5


def _worker(rank, world_size, store, tokens_uri, out, runs, results):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        for name, extra in runs.items():
            cfg = tiny_train(num_workers=world_size, **CFG, **extra)
            summary = train(tiny_model(), cfg, tokens_uri, report=checkpoint_to(f"{out}/{name}"))
            results[(name, rank)] = (summary.history, summary.final_val_loss)
    finally:
        dist.destroy_process_group()


def _spawn(world_size, runs, tokens_uri, tmp):
    tmp.mkdir(parents=True, exist_ok=True)
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(world_size, str(tmp / "store"), tokens_uri, str(tmp), runs, results), nprocs=world_size)
    return dict(results)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from llm.train.data import write_token_dataset
    from tests.unit.train.tiny import VOCAB, counting_docs

    tmp = tmp_path_factory.mktemp("strategies")
    tokens = str(tmp / "tokens")
    write_token_dataset(tokens, {"train": counting_docs(200, 0), "val": counting_docs(40, 1)}, vocab_size=VOCAB)
    results = _spawn(2, TWO, tokens, tmp / "two")
    results.update(_spawn(4, FOUR, tokens, tmp / "four"))
    return results, tmp


def _weights(path):
    model, _ = load_model(str(path))
    return model.state_dict()


@pytest.mark.parametrize("name", [n for n in [*TWO, *FOUR] if n != "ddp" and "bf16" not in n])
def test_strategy_matches_ddp(runs, name):
    results, tmp = runs
    ranks = 4 if name in FOUR else 2
    ref_history, ref_val = results[("ddp", 0)]
    history, val = results[(name, 0)]
    # every rank reports the same global values
    for r in range(1, ranks):
        assert results[(name, r)] == (history, val)
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    for ours, ref in zip(history, ref_history):
        assert abs(ours["loss"] - ref["loss"]) < TOL, (name, ours, ref)
        # the global gradient norm of the sharded model equals the unsharded one (before clipping)
        assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=TOL), (name, ours, ref)
    assert ref_history[0]["grad_norm"] > CFG["gradient_clipping"]  # clipping was active
    assert abs(val - ref_val) < TOL
    ref_w = _weights(tmp / "two" / "ddp")
    ours_w = _weights(tmp / ("four" if name in FOUR else "two") / name)
    assert ours_w.keys() == ref_w.keys()
    for k in ref_w:
        torch.testing.assert_close(ours_w[k], ref_w[k], atol=TOL, rtol=TOL, msg=f"{name}: {k}")


@pytest.mark.parametrize("name", BF16)
def test_bf16_autocast_under_sharding_matches_ddp_bf16(runs, name):
    """bf16 autocast inside FSDP and pipeline stages: the same losses as DDP in bf16, to bf16's precision.

    bf16 keeps 8 significant bits (3.9e-3 relative); the loss itself is computed in fp32 from bf16
    logits, and sharding changes where partial sums are rounded to bf16, so losses may differ by a
    few bf16 ulps of the logits: 5e-3 nats bounds that (measured: 5e-7 on this tiny model), far below the ~0.1-nat
    drop a step makes here.
    """
    results, _ = runs
    ref, _ = results[("ddp-bf16", 0)]
    ours, _ = results[(name, 0)]
    for a, b in zip(ours, ref):
        assert abs(a["loss"] - b["loss"]) < 5e-3, (name, a, b)
    assert ours[-1]["loss"] < ours[0]["loss"] - 0.1  # it trains


# ddp-dropout: each rank draws its own dropout masks, so a resume is exact only if every rank's random
# state comes back (rank 1 restarting from a fresh stream would change the loss at step 3).
RESUME = {"fsdp": TWO["fsdp"], "tp": TWO["tp"], "pp": TWO["pp-1f1b"], "ddp-dropout": dict(strategy="ddp", dropout=0.1)}


def _resume_worker(rank, world_size, store, tokens_uri, out, results):
    from llm.train.loop import ResumeState

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        for name, extra in RESUME.items():
            extra = dict(extra)
            model_cfg = tiny_model().model_copy(update={"dropout": extra.pop("dropout", 0.0)})
            cfg = tiny_train(num_workers=world_size, **{**CFG, "checkpoint_every": 2}, **extra)

            def keep(metrics, folder, name=name):
                if folder is not None:
                    checkpoint_to(f"{out}/{name}-step{metrics['step']}")(metrics, folder)

            full = train(model_cfg, cfg, tokens_uri, report=keep)
            dist.barrier()  # rank 0 has written the step-2 checkpoint
            resumed = train(model_cfg, cfg, tokens_uri, resume=ResumeState.load(f"{out}/{name}-step2"),
                            report=checkpoint_to(f"{out}/{name}-resumed"))
            results[(name, rank)] = (full.history, resumed.history)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def resumed_runs(runs):
    _, tmp = runs
    out = tmp / "resume"
    out.mkdir()
    results = mp.Manager().dict()
    mp.spawn(_resume_worker, args=(2, str(out / "store"), str(tmp / "tokens"), str(out), results), nprocs=2)
    return dict(results), out


@pytest.mark.parametrize("name", RESUME)
def test_sharded_strategies_resume_exactly(resumed_runs, name):
    """Stopped after step 2 and resumed, a run ends with the same losses and weights as one that never
    stopped: weights and the full (re-sharded) optimizer state round-trip through the checkpoint."""
    results, out = resumed_runs
    full, resumed = results[(name, 0)]
    assert [h["step"] for h in resumed] == [3, 4]
    state = json.loads((out / f"{name}-step2" / "state.json").read_text())
    assert len(state["rng_per_rank"]) == 2  # every rank's random state is in the checkpoint
    assert resumed == full[2:]
    a, b = _weights(out / f"{name}-step4"), _weights(out / f"{name}-resumed")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=0, rtol=0, msg=f"{name}: {k}")


@pytest.mark.parametrize("name", ["fsdp", "tp", "fsdp+tp"])
def test_sharded_strategies_write_dcp_shards(runs, name):
    """FSDP/TP checkpoints hold each rank's model and optimizer shards (torch.distributed.checkpoint)
    beside the full model.pt that evaluation reads, and no full optimizer copy."""
    import json

    _, tmp = runs
    ranks = 4 if name in FOUR else 2
    folder = tmp / ("four" if name in FOUR else "two") / name
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    shards = [f"sharded/__{r}_0.distcp" for r in range(ranks)]
    assert files == sorted(["model.pt", "state.json", "sharded/.metadata", *shards]), files
    assert json.loads((folder / "state.json").read_text())["optimizer_format"] == "dcp"
    # Every shard holds a part of the state (FSDP splits each tensor across all ranks).
    assert all((folder / s).stat().st_size > 0 for s in shards)


def _early_stop_worker(rank, world_size, store, tokens_uri, out, results):
    from llm.train.loop import ResumeState

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        cfg = tiny_train(num_workers=world_size, strategy="fsdp", batch_size=8, micro_batch_size=2, max_steps=60,
                         eval_every=2, checkpoint_every=2, eval_batches=2, early_stopping_patience=1,
                         early_stopping_min_delta=10.0)

        def keep(metrics, folder):
            name = "final" if "early_stopped" in metrics else f"step{metrics['step']}"
            checkpoint_to(f"{out}/{name}")(metrics, folder)

        stopped = train(tiny_model(), cfg, tokens_uri, report=keep)
        more = tiny_train(num_workers=world_size, strategy="fsdp", batch_size=8, micro_batch_size=2, max_steps=4,
                          eval_every=4, checkpoint_every=4, eval_batches=2, log_every=1)
        runs = {}
        for name in ("final", "step2"):
            dist.barrier()  # every rank's shards are in place
            runs[name] = train(tiny_model(), more, tokens_uri, resume=ResumeState.load(f"{out}/{name}"),
                               report=checkpoint_to(f"{out}/from-{name}")).history
        results[rank] = (stopped.steps, runs["final"], runs["step2"])
    finally:
        dist.destroy_process_group()


def test_fsdp_early_stopping_checkpoint_resumes_from_the_best_step(tmp_path, tokens_uri):
    """Under fsdp too the final checkpoint of an early stop is the best step's (DCP shards of its weights
    and optimizer state): resumed, it continues exactly as the regular checkpoint of that step does."""
    results = mp.Manager().dict()
    mp.spawn(_early_stop_worker, args=(2, str(tmp_path / "store"), tokens_uri, str(tmp_path), results), nprocs=2)
    steps, from_final, from_best = results[0]
    assert steps == 4 and results[1] == results[0]
    assert json.loads((tmp_path / "final" / "state.json").read_text())["step"] == 2
    assert [h["step"] for h in from_final] == [3, 4]
    assert from_final == from_best
    a, b = _weights(tmp_path / "from-final"), _weights(tmp_path / "from-step2")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
