"""Training throughput and MFU of the project's GPT on one GPU: ~124M and ~350M models, bf16 autocast,
with and without torch.compile.

One process, one device, no Ray: this measures the model and optimizer step (forward, backward, global
norm clip, fused AdamW) that every worker runs. Tokens are random ids (throughput does not depend on
their values). MFU = FLOPs/token (GPT.flops_per_token, 6N + 12*L*H*Q*T) x tokens/s over the dense bf16
peak from llm/train/mfu.py's table; a device not in the table prints MFU as n/a.

Budget: whole script under 5 minutes on an H200 (each case is timed for a fixed number of seconds after
its warm-up; cases that would start after the deadline are skipped and say so).

    .venv/bin/python bench/gpu_mfu.py            # on a GPU
    .venv/bin/python bench/gpu_mfu.py --dry-run  # tiny models on CPU: checks the script end to end
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from llm.config import ModelConfig, TrainConfig
from llm.model.gpt import GPT
from llm.train.mfu import device_peak_flops, mfu
from llm.train.optim import build_optimizer


@dataclass
class Case:
    """One model size: its config and the sequences per step (micro-batch, no accumulation)."""

    label: str
    model: ModelConfig
    batch: int


GPU_CASES = [
    # GPT-2 small: 12 x 768, 1024 tokens of context, vocabulary padded to a multiple of 64 (50304).
    Case("124M", ModelConfig(layers=12, hidden_size=768, attention_heads=12, vocab_size=50304, context_length=1024), 32),
    # GPT-2 medium: 24 x 1024.
    Case("350M", ModelConfig(layers=24, hidden_size=1024, attention_heads=16, vocab_size=50304, context_length=1024), 16),
]
DRY_CASES = [
    Case("tiny-a", ModelConfig(layers=2, hidden_size=64, attention_heads=2, vocab_size=256, context_length=64), 4),
    Case("tiny-b", ModelConfig(layers=3, hidden_size=96, attention_heads=3, vocab_size=256, context_length=64), 4),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(case: Case, compiled: bool, device: torch.device, warmup: int, seconds: float) -> dict[str, float | None]:
    """Train `case` on random tokens; returns tokens/s, MFU (0..1 or None), step ms, peak memory GiB."""
    torch.manual_seed(0)
    model = GPT(case.model).to(device)
    cfg = TrainConfig(precision="bf16", num_workers=1, batch_size=case.batch, micro_batch_size=case.batch)
    optimizer = build_optimizer(model, cfg, device, tied_output=case.model.tie_embeddings)
    step_model = torch.compile(model) if compiled else model
    vocab, context = case.model.vocab_size, case.model.context_length
    inputs = torch.randint(0, vocab, (case.batch, context), device=device)
    targets = torch.randint(0, vocab, (case.batch, context), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            _, loss = step_model(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):  # includes compilation and the allocator's first growth
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps, started = 0, time.perf_counter()
    while True:
        step()
        steps += 1
        if steps % 5 == 0 or device.type != "cuda":
            _sync(device)
            if time.perf_counter() - started >= seconds:
                break
    _sync(device)
    elapsed = time.perf_counter() - started
    tokens_per_s = steps * case.batch * context / elapsed
    peak = device_peak_flops(device, "bf16")
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "params_m": model.num_params() / 1e6,
        "tokens_per_s": tokens_per_s,
        "mfu": mfu(model.flops_per_token(), tokens_per_s, 1, peak),
        "step_ms": 1000 * elapsed / steps,
        "memory_gib": memory,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models on CPU, a few steps each")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per case (after warm-up)")
    parser.add_argument("--budget", type=float, default=280.0, help="skip cases that would start after this many seconds")
    args = parser.parse_args()

    if args.dry_run:
        device, cases, warmup, seconds = torch.device("cpu"), DRY_CASES, 2, args.seconds or 1.0
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no GPU: run with --dry-run to check the script on CPU")
        device, cases, warmup, seconds = torch.device("cuda"), GPU_CASES, 5, args.seconds or 15.0
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers outside autocast (optimizer, norms)
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name} | bf16 peak: {device_peak_flops(device, 'bf16') or 'not in table'} FLOP/s")
    print(f"{'model':>7} {'compile':>7} {'params':>8} {'tokens/s':>11} {'step ms':>9} {'MFU':>7} {'mem GiB':>8}")
    started = time.perf_counter()
    for case in cases:
        for compiled in (False, True):
            if time.perf_counter() - started > args.budget:
                print(f"{case.label:>7} {str(compiled):>7} skipped: past the {args.budget:.0f} s budget")
                continue
            torch._dynamo.reset()
            r = run_case(case, compiled, device, warmup, seconds)
            utilisation = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
            memory = "n/a" if r["memory_gib"] is None else f"{r['memory_gib']:.1f}"
            print(f"{case.label:>7} {str(compiled):>7} {r['params_m']:>7.1f}M {r['tokens_per_s']:>11,.0f} "
                  f"{r['step_ms']:>9.1f} {utilisation:>7} {memory:>8}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
