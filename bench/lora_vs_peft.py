"""LoRA fine-tuning step: llmpipe's LoRA training step against Hugging Face PEFT's LoRA on the same GPT-2.

    .venv/bin/python bench/lora_vs_peft.py                              # 6 x 384, 256-token context, 2 rounds
    .venv/bin/python bench/lora_vs_peft.py --steps 40 --warmup 10 --repeat 3 --threads 1

(a) llmpipe: `GPT` (bias on, tied embeddings, dropout 0) with `apply_lora` on attention qkv, the attention
    output, the MLP input and the MLP output (`qkv`, `proj`, `fc`), and the project's real step:
    `ParallelModel(model, ctx, train_cfg).forward_backward([(inputs, targets)])` in a world of one,
    `global_grad_norm` + `clip_grads`, then the fused AdamW from `build_optimizer`.
(b) peer: `transformers.GPT2LMHeadModel` built from a `GPT2Config` of the same shape (exact GELU, tied
    embeddings, dropout 0, SDPA attention), wrapped by `peft.get_peft_model` with LoRA on `c_attn`,
    `c_proj` and `c_fc` (both `c_proj`s: attention and MLP outputs), `labels=` loss,
    `clip_grad_norm_`, then `torch.optim.AdamW(fused=True)` on the trainable parameters.

Fair by construction:
- The same model and the same weights: one set of base weights (random GPT init, fixed seed) and LoRA A
  matrices is written once and loaded by both sides (Conv1D weights transposed); LoRA B starts at zero on
  both. The first step's loss is asserted equal, so both sides compute the same function.
- The same batches: SFT rows of the development data (a prompt, then its response, one row per
  sequence, padded to the context, prompt and padding masked out of the loss), encoded by a SentencePiece
  tokenizer trained here on those texts; the peer's `labels` are shifted inside the model to exactly the
  targets the project gets.
- Rank 8, alpha 16, LoRA dropout 0, no bias training on both (the trainable parameter counts are
  asserted equal); fp32; the same AdamW hyper-parameters (fused on both), learning rate held constant,
  global-norm clipping at `--clip` on both (0: neither).
- Each side runs in its own fresh child process, so start-up is alike and the peak resident set (the
  kernel's high-water mark, VmHWM) is that side's alone; both children are pinned to the same cores
  and use the same number of intra-op threads (`--threads`, default: every core of the machine).
- Step = forward + backward + clipping + optimizer step + zero_grad, timed one by one; `--warmup` steps
  first (untimed, alike), then the median of `--steps`. The sides run alternately `--repeat` times and
  each keeps its fastest median.

Printed per side: trainable parameters, median step time, peak memory (whole process) and the rise of
the training steps' peak above the memory held once the model and optimizer are built (the high-water
mark is reset there; AdamW's state is created in the first step, so it counts in the rise), first and
last losses. The last line is the step-time ratio llmpipe/peer (target: at most 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SFT = REPO.parent / "shared" / "data" / "sft_dev.jsonl"

# LoRA targets: llmpipe's Linear names and the same layers in the GPT-2 implementation of the peer.
PROJECT_TARGETS = ("qkv", "proj", "fc")
PEER_TARGETS = ["c_attn", "c_proj", "c_fc"]
# llmpipe parameter name (inside block i) -> the peer's, and whether the weight is stored transposed (Conv1D).
PEER_NAMES = {
    "ln1": ("ln_1", False), "ln2": ("ln_2", False),
    "attn.qkv": ("attn.c_attn", True), "attn.proj": ("attn.c_proj", True),
    "mlp.fc": ("mlp.c_fc", True), "mlp.proj": ("mlp.c_proj", True),
}


# ------------------------------------------------------------------------------ shared with lora_vs_full.py


def pin(threads: int) -> int:
    """This process and its children on the first `threads` cores it may use; returns the count used."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else list(range(os.cpu_count() or 1))
    threads = max(1, min(threads, len(cores)))
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cores[:threads]))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads


def all_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def offline_env() -> None:
    """Nothing may reach the network: the peer's model is built from a config, never downloaded."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def read_sft(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def train_tokenizer(rows: list[dict], vocab_size: int):
    """A SentencePiece tokenizer trained on the rows' prompts and responses."""
    from llm.tokenizer.base import tokenizer_from_bytes
    from llm.tokenizer.spm import train_sentencepiece

    return tokenizer_from_bytes(train_sentencepiece((r["prompt"] + "\n" + r["response"] for r in rows), vocab_size))


def encode_sft(tok, rows: list[dict], context: int) -> list[tuple[list[int], int]]:
    """Each row as (tokens, prompt length): <s> prompt newline, then response </s>, cut to `context`
    tokens (so the last position never has a target). Rows left without a response token are dropped."""
    out = []
    for r in rows:
        prompt = [tok.bos_id] + tok.encode(r["prompt"] + "\n")
        seq = (prompt + tok.encode(r["response"]) + [tok.eos_id])[:context]
        if len(seq) > len(prompt):
            out.append((seq, len(prompt)))
    return out


def sft_tensors(encoded: list[tuple[list[int], int]], context: int, pad_id: int):
    """(inputs, targets, labels), each (N, context) int64. targets[t] is the token after t where that
    token is part of the response, else -100 (llmpipe's convention); labels[t] is token t where it is
    part of the response, else -100 (shifted inside the peer's model: its targets are then the same)."""
    import torch

    n = len(encoded)
    inputs = torch.full((n, context), pad_id, dtype=torch.long)
    targets = torch.full((n, context), -100, dtype=torch.long)
    labels = torch.full((n, context), -100, dtype=torch.long)
    for i, (seq, prompt_len) in enumerate(encoded):
        t = torch.tensor(seq, dtype=torch.long)
        inputs[i, : len(seq)] = t
        labels[i, prompt_len : len(seq)] = t[prompt_len:]
        targets[i, prompt_len - 1 : len(seq) - 1] = t[prompt_len:]
    return inputs, targets, labels


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_mib() -> float:
    """Current resident set of this process in MiB."""
    return _status_mib("VmRSS")


def peak_mib() -> float:
    """Peak resident set of this process in MiB: the kernel's high-water mark of its own memory (VmHWM).
    Not `ru_maxrss`, which a child inherits from its parent: it starts at the parent's resident set."""
    return _status_mib("VmHWM")


def reset_peak() -> bool:
    """Start the high-water mark afresh from the current resident set (Linux 4.0+); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_child(argv: list[str]) -> dict:
    """Run this script (or another) in a fresh interpreter; its last stdout line is a JSON result."""
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=dict(os.environ))
    if out.returncode:
        sys.stderr.write(out.stdout[-4000:] + out.stderr[-8000:])
        raise SystemExit(f"child {' '.join(argv[:4])} ... failed with exit status {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- the two sides


def model_config(args: argparse.Namespace):
    from llm.config import ModelConfig

    return ModelConfig(layers=args.layers, hidden_size=args.hidden, attention_heads=args.heads,
                       context_length=args.context, vocab_size=args.vocab, dropout=0.0, bias=True, tie_embeddings=True)


def train_config(args: argparse.Namespace):
    from llm.config import TrainConfig

    return TrainConfig(strategy="ddp", num_workers=1, batch_size=args.batch, micro_batch_size=args.batch,
                       learning_rate=args.lr, weight_decay=args.weight_decay, gradient_clipping=args.clip,
                       precision="fp32", seed=args.seed)


def build_project(args: argparse.Namespace, state: dict):
    """llmpipe's LoRA model in its training wrapper, its optimizer, and one step as the loop runs it."""
    import torch

    from llm.model.gpt import GPT
    from llm.model.peft import apply_lora, trainable_counts
    from llm.train.optim import build_optimizer
    from llm.train.parallel import ParallelContext, ParallelModel, clip_grads

    device = torch.device("cpu")
    model = GPT(model_config(args))
    apply_lora(model, rank=args.rank, alpha=args.alpha, dropout=0.0, targets=PROJECT_TARGETS)
    model.load_state_dict(state)
    train_cfg = train_config(args)
    ctx = ParallelContext.create(train_cfg, device)
    parallel = ParallelModel(model, ctx, train_cfg)
    optimizer = build_optimizer(parallel.module, train_cfg, device, tied_output=True)
    parallel.module.train()

    def step(inputs, targets, _labels) -> torch.Tensor:
        loss = parallel.forward_backward([(inputs, targets)])
        if train_cfg.gradient_clipping > 0:
            clip_grads(parallel.module.parameters(), train_cfg.gradient_clipping, parallel.grad_norm())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    trainable, total = trainable_counts(model)
    return step, trainable, total


def peer_state(state: dict, layers: int) -> tuple[dict, dict]:
    """llmpipe's state dict as the peer's GPT-2 base weights and its LoRA A/B matrices."""
    base = {
        "transformer.wte.weight": state["wte.weight"],
        "transformer.wpe.weight": state["wpe.weight"],
        "transformer.ln_f.weight": state["ln_f.weight"],
        "transformer.ln_f.bias": state["ln_f.bias"],
    }
    lora = {}
    for i in range(layers):
        for ours, (theirs, transposed) in PEER_NAMES.items():
            w = state[f"blocks.{i}.{ours}.weight"]
            base[f"transformer.h.{i}.{theirs}.weight"] = w.t().contiguous() if transposed else w
            base[f"transformer.h.{i}.{theirs}.bias"] = state[f"blocks.{i}.{ours}.bias"]
            if transposed:  # the LoRA targets
                for m in ("lora_A", "lora_B"):
                    lora[f"transformer.h.{i}.{theirs}.{m}.default.weight"] = state[f"blocks.{i}.{ours}.{m}"]
    return base, lora


def build_peer(args: argparse.Namespace, state: dict):
    """The peer's GPT-2 with PEFT LoRA, its optimizer, and one training step. `state` is `peer_state`'s
    output (converted beforehand, so neither side holds temporary copies of the weights)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=args.vocab, n_positions=args.context, n_embd=args.hidden, n_layer=args.layers, n_head=args.heads,
        activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        tie_word_embeddings=True, use_cache=False, attn_implementation="sdpa",
    )
    model = GPT2LMHeadModel(config)
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    assert model.lm_head.weight is model.transformer.wte.weight, "output projection not tied"
    base, lora = state["base"], state["lora"]
    missing, unexpected = model.load_state_dict(base, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    model = get_peft_model(model, LoraConfig(
        task_type="CAUSAL_LM", r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=PEER_TARGETS,
        fan_in_fan_out=True, bias="none",
    ))
    params = dict(model.base_model.model.named_parameters())
    assert set(lora) <= set(params) and sum(".lora_" in k for k in params) == len(lora), "LoRA layers differ"
    with torch.no_grad():
        for name, value in lora.items():
            params[name].copy_(value)
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    cfg = train_config(args)  # the same hyper-parameters as llmpipe's side
    optimizer = torch.optim.AdamW(trainable_params, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                  weight_decay=cfg.weight_decay, fused=True)
    model.train()

    def step(inputs, _targets, labels) -> torch.Tensor:
        loss = model(input_ids=inputs, labels=labels).loss
        loss.backward()
        if cfg.gradient_clipping > 0:
            torch.nn.utils.clip_grad_norm_(trainable_params, cfg.gradient_clipping)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    trainable, total = model.get_nb_trainable_parameters()
    return step, trainable, total


def measure(args: argparse.Namespace) -> dict:
    """In this fresh process: build one side, run its warm-up and timed steps."""
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    state = torch.load(work / f"{args.side}_weights.pt", mmap=True, weights_only=True)
    batches = torch.load(work / "batches.pt", weights_only=True)
    step, trainable, total = (build_project if args.side == "project" else build_peer)(args, state)
    del state
    inputs, targets, labels = batches["inputs"], batches["targets"], batches["labels"]
    build_peak, baseline = peak_mib(), rss_mib()
    reset_peak()
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        j = i % len(inputs)
        start = time.perf_counter()
        loss = step(inputs[j], targets[j], labels[j])
        elapsed = time.perf_counter() - start
        losses.append(float(loss))
        if i >= args.warmup:
            times.append(elapsed)
    step_peak = peak_mib()
    return {"side": args.side, "step_s": statistics.median(times), "trainable": trainable, "total": total,
            "peak_mib": max(build_peak, step_peak), "baseline_mib": baseline, "delta_mib": step_peak - baseline,
            "losses": losses,
            "threads": torch.get_num_threads()}


def prepare(args: argparse.Namespace, work: Path) -> int:
    """Write the tokenized batches and the shared weights; returns the vocabulary size."""
    import numpy as np
    import torch

    from llm.model.gpt import GPT
    from llm.model.peft import apply_lora

    rows = read_sft(args.data)
    tok = train_tokenizer(rows, args.vocab_size)
    inputs, targets, labels = sft_tensors(encode_sft(tok, rows, args.context), args.context, tok.pad_id)
    n = args.warmup + args.steps
    pick = torch.from_numpy(np.random.default_rng(args.seed).choice(len(inputs), (n, args.batch), replace=False))
    torch.save({"inputs": inputs[pick], "targets": targets[pick], "labels": labels[pick]}, work / "batches.pt")
    args.vocab = tok.vocab_size
    torch.manual_seed(args.seed)
    model = GPT(model_config(args))
    apply_lora(model, rank=args.rank, alpha=args.alpha, dropout=0.0, targets=PROJECT_TARGETS)
    state = model.state_dict()
    torch.save(state, work / "project_weights.pt")
    base, lora = peer_state(state, args.layers)
    torch.save({"base": base, "lora": lora}, work / "peer_weights.pt")
    return tok.vocab_size


def child_argv(args: argparse.Namespace, side: str, work: Path) -> list[str]:
    skip = {"side", "work", "repeat"}
    argv = [__file__, "--side", side, "--work", str(work)]
    for key, value in vars(args).items():
        if key not in skip:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=4096,
                        help="SentencePiece vocabulary trained on the SFT texts")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clipping on both sides; 0: none")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (the median counts)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--repeat", type=int, default=2, help="runs per side, alternating; the fastest counts")
    parser.add_argument("--threads", type=int, default=all_cores(), help="cores and intra-op threads of each side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=str(DEFAULT_SFT), help="SFT rows (JSONL with prompt and response)")
    parser.add_argument("--side", choices=["project", "peer"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    offline_env()
    if args.side is not None:
        print(json.dumps(measure(args)))
        return
    args.threads = pin(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        work = Path(tmp)
        prepare(args, work)
        runs: dict[str, list[dict]] = {"project": [], "peer": []}
        for i in range(args.repeat):
            for side in (("project", "peer") if i % 2 == 0 else ("peer", "project")):
                runs[side].append(run_child(child_argv(args, side, work)))
    best = {side: min(rs, key=lambda r: r["step_s"]) for side, rs in runs.items()}
    ours, peer = best["project"], best["peer"]
    assert ours["trainable"] == peer["trainable"], \
        f"trainable parameters differ: {ours['trainable']} vs {peer['trainable']}"
    first_gap = abs(ours["losses"][0] - peer["losses"][0]) / peer["losses"][0]
    assert first_gap < 1e-4, \
        f"first-step losses differ ({ours['losses'][0]} vs {peer['losses'][0]}): not the same model"

    tokens = args.batch * args.context
    print(f"model: {args.layers} x {args.hidden}, {args.heads} heads, context {args.context}, vocab {args.vocab}; "
          f"batch {args.batch} x {args.context} = {tokens} tokens; LoRA r={args.rank} alpha={args.alpha:g} on "
          f"qkv/attn-out/mlp-in/mlp-out; fp32, {args.threads} thread(s); median of {args.steps} steps after "
          f"{args.warmup} warm-up, best of {args.repeat} run(s)")
    for label, r in (("llmpipe (apply_lora + ParallelModel):", ours), ("peer (GPT2LMHeadModel + PEFT):       ", peer)):
        print(f"{label} {r['step_s'] * 1e3:7.1f} ms/step ({tokens / r['step_s']:6.0f} tok/s; runs: "
              + ", ".join(f"{x['step_s'] * 1e3:.1f}" for x in runs[r["side"]]) + ")  "
              f"trainable {r['trainable']:,} of {r['total']:,}  peak RSS {r['peak_mib']:.0f} MiB "
              f"(+{r['delta_mib']:.0f} MiB over {r['baseline_mib']:.0f} after build)  "
              f"loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}")
    print(f"step time ratio llmpipe/peer: {ours['step_s'] / peer['step_s']:.3f}")


if __name__ == "__main__":
    main()
