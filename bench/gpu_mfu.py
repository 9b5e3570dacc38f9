"""Training throughput and MFU of the project's own training step on one GPU, with the shipped configs'
settings: `configs/gpt2-small.yaml` (~124M) and `configs/seed-24x1024.yaml` (~350M), eager and with
`train.compile`.

What runs is `llm.train.loop.run_workload` with a `TokenWorkload`: the function every Ray Train worker
runs (`llm.train.ray_worker.ray_train_worker` calls it after Ray Train has set up the device), here called
directly in one process with no process group (one worker, so no gradient all-reduce). Everything in it is
the project's: memory-mapped token windows, learning-rate schedule, micro-batch accumulation, bf16
autocast (`train.precision`), the global-norm clip (`train.gradient_clipping`) with its bad-step guard
settings, `build_optimizer`'s AdamW with no-decay groups, `train.compile`. Settings are the config file's
as shipped: its model (vocabulary 50257, not padded), micro-batch size, precision, clipping, learning
rate; the per-worker batch is the file's global batch over its workers (512 / 8 = 64 sequences, so 4 or
8 accumulated micro-batches a step, what each of its workers does). Only these change: one worker,
`max_steps` = 3 logging windows, evaluation and checkpoints only at the end (one evaluation also runs
at step 0, as always), no checkpoint written (no reporter), no system metrics. TF32 is left as the
project leaves it (PyTorch's default: off for matmuls).

Timing is the loop's own: its `tokens_per_s` of a logging window (training steps only; evaluation and
checkpoint writing are outside every window). The first window holds compilation and the allocator's
growth and is not used; the best of the later windows is printed. MFU is the loop's own figure
(`GPT.flops_per_token` x tokens/s over `llm/train/mfu.py`'s dense peak for the precision); a device not
in the table prints n/a. Memory is the loop's peak (CUDA allocator) over the whole run. Tokens are random
ids written as a token dataset (throughput does not depend on their values).

Budget: under 5 minutes on an H200 (cases that would start after `--budget` seconds are skipped and say so).

    .venv/bin/python bench/gpu_mfu.py            # on a GPU
    .venv/bin/python bench/gpu_mfu.py --dry-run  # tiny models on CPU, the same loop: checks the script end to end
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [("124M", "gpt2-small.yaml"), ("350M", "seed-24x1024.yaml")]


class Metrics:
    """Stands in for the tracking run: the loop logs its window metrics here (`RunTarget.log_metrics`)."""

    def __init__(self) -> None:
        self.windows: list[dict[str, float]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if "tokens_per_s" in metrics:
            self.windows.append({**metrics, "step": step})


def case_configs(label: str, name: str, dry_run: bool, window: int, compiled: bool):
    """The shipped config's model and training settings for one worker (see the module docstring)."""
    from llm.config import load_config

    cfg = load_config(REPO / "configs" / name)
    model, train = cfg.model, cfg.train
    per_worker = train.batch_size // train.num_workers
    if dry_run:  # same loop and settings, tiny shapes
        model = model.model_copy(update={"layers": 2, "hidden_size": 64, "attention_heads": 2, "vocab_size": 256,
                                         "context_length": 64})
        per_worker, micro = 4, 2
    else:
        micro = train.micro_batch_size
    train = train.model_copy(update={
        "num_workers": 1, "batch_size": per_worker, "micro_batch_size": micro, "compile": compiled,
        "max_steps": 3 * window, "log_every": window, "eval_every": 3 * window, "eval_batches": 1,
        "checkpoint_every": 3 * window, "system_metrics": False, "use_gpu": not dry_run,
    })
    return model, train


def write_tokens(root: str, vocab: int, context: int, windows: int) -> str:
    from llm.train.data import write_token_dataset

    uri = str(Path(root) / f"tokens-{vocab}-{context}")
    if Path(uri).exists():  # the same random tokens for every case of this shape
        return uri
    rng = np.random.default_rng(0)
    doc = 8 * context
    docs = {"train": [rng.integers(0, vocab, doc).tolist() for _ in range(max(4, windows * (context + 1) // doc + 1))],
            "val": [rng.integers(0, vocab, doc).tolist() for _ in range(2)]}
    write_token_dataset(uri, docs, vocab_size=vocab)
    return uri


def run_case(label: str, name: str, compiled: bool, device: torch.device, window: int, dry_run: bool,
             tmp: str) -> dict[str, float | None]:
    from llm.train.workload import TokenWorkload
    from llm.train.loop import run_workload

    model_cfg, train_cfg = case_configs(label, name, dry_run, window, compiled)
    tokens = write_tokens(tmp, model_cfg.vocab_size, model_cfg.context_length,
                          windows=min(train_cfg.batch_size * train_cfg.max_steps, 4096))
    workload = TokenWorkload(model_cfg, train_cfg, tokens)
    metrics = Metrics()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run_workload(workload, train_cfg, metrics, device=device)
    later = metrics.windows[1:] or metrics.windows
    best = max(later, key=lambda m: m["tokens_per_s"])
    return {"tokens_per_s": best["tokens_per_s"], "step_ms": 1000 * best["step_seconds"], "mfu": best.get("mfu"),
            "memory_gib": best["memory_mib"] / 1024, "batch": train_cfg.batch_size, "micro": train_cfg.micro_batch_size,
            "vocab": model_cfg.vocab_size, "precision": train_cfg.precision, "clip": train_cfg.gradient_clipping}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models on CPU, a few steps each")
    parser.add_argument("--window", type=int, default=None, help="steps per logging window (3 windows a case)")
    parser.add_argument("--budget", type=float, default=280.0, help="skip cases that would start after this many seconds")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from llm.train.mfu import device_peak_flops

    if args.dry_run:
        device, window = torch.device("cpu"), args.window or 2
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no GPU: run with --dry-run to check the script on CPU")
        device, window = torch.device("cuda"), args.window or 8
        torch.cuda.set_device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name} | bf16 peak: {device_peak_flops(device, 'bf16') or 'not in table'} FLOP/s | "
          f"TF32 matmul: {torch.backends.cuda.matmul.allow_tf32} (as the project leaves it)")
    print(f"{'model':>7} {'config':>18} {'compile':>7} {'batch':>9} {'vocab':>6} {'tokens/s':>11} {'step ms':>9} "
          f"{'MFU':>7} {'mem GiB':>8}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-mfu-") as tmp:
        for label, config in CONFIGS:
            for compiled in (False, True):
                if time.perf_counter() - started > args.budget:
                    print(f"{label:>7} {config:>18} {str(compiled):>7} skipped: past the {args.budget:.0f} s budget")
                    continue
                torch._dynamo.reset()
                r = run_case(label, config, compiled, device, window, args.dry_run, tmp)
                utilisation = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
                memory = f"{r['memory_gib']:.1f}" if device.type == "cuda" else f"{r['memory_gib']:.1f}*"
                print(f"{label if not args.dry_run else 'tiny':>7} {config:>18} {str(compiled):>7} "
                      f"{r['batch']:>4}/{r['micro']:<4} {r['vocab']:>6} "
                      f"{r['tokens_per_s']:>11,.0f} {r['step_ms']:>9.1f} {utilisation:>7} {memory:>8}", flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    print("batch = sequences per step / per micro-batch; precision, clipping, learning rate as in each config file"
          + ("; * CPU: peak resident set" if args.dry_run else ""))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
