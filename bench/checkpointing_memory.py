"""Peak memory of one training step with and without activation checkpointing, on a model whose
activations dominate its weights (8 narrow blocks, 512-token context, 16 sequences).

    .venv/bin/python bench/checkpointing_memory.py
    .venv/bin/python bench/checkpointing_memory.py --layers 12 --context 1024 --batch 8

Each setting (`activation_checkpointing` 0 = none, 2 = every second block, 1 = every block, applied
with llmpipe's `apply_activation_checkpointing`) runs in a fresh child process, pinned to the same single
CPU, so the process's peak resident set (`ru_maxrss`) belongs to that setting alone. Reported per
setting: peak memory of the step above the memory held before it (weights, gradients' buffers, the
batch, the Python and torch runtime), and the step's time. There is no peer here: the comparison is
llmpipe against itself without checkpointing. The last line is the ratio of the step's peak memory
without checkpointing to with it on every block (above 1: checkpointing saves memory).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def measure(args: argparse.Namespace) -> dict[str, float]:
    """In this (fresh) process: extra peak MiB and seconds of one forward + backward."""
    import torch

    from llm.config import ModelConfig
    from llm.model.gpt import GPT
    from llm.train.parallel.sharding import apply_activation_checkpointing

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = ModelConfig(layers=args.layers, hidden_size=args.hidden, attention_heads=4, context_length=args.context,
                      vocab_size=256)
    model = GPT(cfg)
    apply_activation_checkpointing(model, args.every)
    x = torch.randint(0, 256, (args.batch, args.context))
    for p in model.parameters():  # gradient buffers exist before the step in a training loop
        p.grad = torch.zeros_like(p)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    _, loss = model(x, x)
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": (peak - before) / 1024, "seconds": seconds,  # ru_maxrss is in KiB on Linux
            "weights_mib": sum(p.numel() for p in model.parameters()) * 4 / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--every", type=int, default=None, help=argparse.SUPPRESS)  # set in the child
    args = parser.parse_args()
    if args.every is not None:
        print(json.dumps(measure(args)))
        return
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    results = {}
    for every, label in ((0, "none"), (2, "every 2nd block"), (1, "every block")):
        cmd = [sys.executable, __file__, "--every", str(every), "--layers", str(args.layers), "--hidden",
               str(args.hidden), "--context", str(args.context), "--batch", str(args.batch)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        results[every] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[every]
        print(f"checkpointing {label:16s} step peak {r['peak_mib']:8.1f} MiB  time {r['seconds']:.2f} s  "
              f"(weights {r['weights_mib']:.1f} MiB)")
    print(f"peak memory ratio none/every-block: {results[0]['peak_mib'] / results[1]['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
