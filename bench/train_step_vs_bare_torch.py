"""Training-step overhead: llmpipe's step in a Ray Train worker against a bare single-process PyTorch loop.

    .venv/bin/python bench/train_step_vs_bare_torch.py                 # fp32, 40 steps, 2 rounds
    .venv/bin/python bench/train_step_vs_bare_torch.py --precision bf16 --steps 60 --repeat 3

(a) llmpipe: `llm.train.trainer.pretrain` with strategy ddp on one Ray Train worker (TorchTrainer, one
    CPU): memory-mapped token windows, AdamW with the no-decay groups, global-norm clipping, the
    step guard, the loss all-reduce and log line every `--steps/2` steps. Its step time is taken from
    the throughput of the last logging window (steps `--steps/2`+1 .. `--steps`), which counts training
    only (no Ray start-up, evaluation or checkpoint writing).
(b) bare: the same GPT, batch, precision and AdamW (fused, same hyper-parameters) in a plain loop in
    this process: forward, backward, `clip_grad_norm_`, step, on one pre-built random batch; timed over
    the same steps (the first half is warm-up).
Both are pinned to the same single CPU with one intra-op thread. Each side runs `--repeat` times,
alternating, and its fastest run counts. The last line is the step-time ratio llmpipe/bare (below 1.05
is the target: at most 5% overhead).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def pin_to_one_core() -> None:
    """This process and its children (the local Ray, its worker) on one CPU, one thread each."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.environ["OMP_NUM_THREADS"] = "1"


def configs(args: argparse.Namespace):
    from llm.config import ModelConfig, TrainConfig

    model = ModelConfig(layers=4, hidden_size=128, attention_heads=4, context_length=128, vocab_size=512)
    half = args.steps // 2
    train = TrainConfig(
        strategy="ddp", num_workers=1, cpus_per_worker=1, batch_size=8, micro_batch_size=8, precision=args.precision,
        max_steps=args.steps, warmup_steps=5, log_every=half, eval_every=args.steps, eval_batches=1,
        checkpoint_every=args.steps, seed=1,
    )
    return model, train


def run_llmpipe(args: argparse.Namespace, tokens: str, out: str) -> float:
    """Seconds per optimizer step of the project's training step in a Ray Train worker."""
    from llm.train.checkpoint import read_state
    from llm.train.trainer import pretrain

    model_cfg, train_cfg = configs(args)
    result = pretrain(model_cfg, train_cfg, tokens, out)
    tokens_per_s = read_state(result.checkpoint_uri)["tokens_per_s"]
    return train_cfg.batch_size * model_cfg.context_length / tokens_per_s


def run_bare(args: argparse.Namespace) -> float:
    """Seconds per optimizer step of a plain PyTorch loop over the same model and batch."""
    import torch

    from llm.model.gpt import GPT

    torch.set_num_threads(1)
    model_cfg, train_cfg = configs(args)
    torch.manual_seed(1)
    model = GPT(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.learning_rate, betas=(train_cfg.beta1, train_cfg.beta2),
                            weight_decay=train_cfg.weight_decay, fused=True)
    x = torch.randint(0, model_cfg.vocab_size, (train_cfg.batch_size, model_cfg.context_length))
    y = torch.roll(x, -1, dims=1)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    half = args.steps // 2
    start = 0.0
    for step in range(args.steps):
        if step == half:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.gradient_clipping)
        opt.step()
        opt.zero_grad(set_to_none=True)
    loss.item()
    return (time.perf_counter() - start) / (args.steps - half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (the second half is timed)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per side, alternating; the fastest counts")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    pin_to_one_core()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    from llm.cluster import ensure_ray
    from llm.config import RayConfig
    from llm.train.data import write_token_dataset

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        rng = np.random.default_rng(0)
        docs = {split: [rng.integers(4, 512, 400).tolist() for _ in range(n)] for split, n in (("train", 300), ("val", 20))}
        tokens = os.path.join(tmp, "tokens")
        write_token_dataset(tokens, docs, vocab_size=512)
        ensure_ray(RayConfig(num_cpus=1, object_store_memory=128 * 1024 * 1024))
        ours, bare = [], []
        for i in range(args.repeat):
            ours.append(run_llmpipe(args, tokens, os.path.join(tmp, f"out{i}")))
            bare.append(run_bare(args))
    steps = args.steps - args.steps // 2
    print(f"llmpipe (Ray Train ddp, 1 worker): {min(ours) * 1e3:.1f} ms/step over {steps} steps (runs: "
          + ", ".join(f"{t * 1e3:.1f}" for t in ours) + ")")
    print(f"bare PyTorch loop:                 {min(bare) * 1e3:.1f} ms/step over {steps} steps (runs: "
          + ", ".join(f"{t * 1e3:.1f}" for t in bare) + ")")
    print(f"step time ratio llmpipe/bare: {min(ours) / min(bare):.3f}")


if __name__ == "__main__":
    main()
