"""LoRA against full fine-tuning in llmpipe: memory, step time and held-out response loss on the same data.

    .venv/bin/python bench/lora_vs_full.py                          # 4 x 192, 200 steps each, a few minutes on 2 cores
    .venv/bin/python bench/lora_vs_full.py --steps 400 --layers 6 --hidden 384 --heads 6

Both sides fine-tune the same base model on the same batches with llmpipe's own training step
(`ParallelModel.forward_backward` in a world of one, `global_grad_norm` + `clip_grads`, the fused AdamW of
`build_optimizer`, the warm-up + cosine schedule of `learning_rate`), fp32, `--clip` clipping on both:

(a) LoRA: `apply_lora` rank 8, alpha 16, dropout 0 on attention qkv, attention output, MLP input and MLP
    output; everything else frozen. Learning rate `--lora-lr` (default 3e-3).
(b) full: every weight trained. Learning rate `--full-lr` (default 1e-3, the fine-tune default).
LoRA's rate is the higher, as usual: its update starts at zero and lives in a rank-8 subspace.

The base: a GPT (bias on, tied embeddings) from a fixed seed, pretrained here for `--pretrain-steps` steps
of plain next-token prediction over the training split's prompt and response texts (packed into full
windows), written once and loaded by both sides. The data: the development SFT rows, split by a hash of
each row's id (`--held-out` percent held out); the tokenizer is trained on the training split. A
fine-tuning row is a prompt and its response padded to the context, the loss on the response only; the
same sequence of batches goes to both sides. The held-out loss is the mean cross-entropy per response
token over every held-out row, after the last step.

Each side runs in its own fresh child process on the same pinned cores with the same number of threads
(`--threads`, default all), so its peak resident set (the kernel's high-water mark, VmHWM) is its own:
printed whole and as the rise of the training steps' peak above the memory held once the model is
built (the mark is reset there). Step time is the median over the steps after the first five; the
training runs are followed by `--repeat - 1` more short timing runs per side, alternating, and each side
keeps its fastest (the machine may be shared). The last line is LoRA's held-out loss relative to full
fine-tuning's (target: within 10%).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lora_vs_peft import (  # noqa: E402  (the SFT batches and process helpers of the LoRA step benchmark)
    DEFAULT_SFT,
    PROJECT_TARGETS,
    all_cores,
    encode_sft,
    peak_mib,
    pin,
    read_sft,
    reset_peak,
    rss_mib,
    run_child,
    sft_tensors,
    train_tokenizer,
)


def held_out(row_id: str, percent: int) -> bool:
    return int(hashlib.sha256(row_id.encode("utf-8")).hexdigest(), 16) % 100 < percent


def configs(args: argparse.Namespace, lr: float, steps: int, warmup: int):
    from llm.config import ModelConfig, TrainConfig

    model = ModelConfig(layers=args.layers, hidden_size=args.hidden, attention_heads=args.heads,
                        context_length=args.context, vocab_size=args.vocab, dropout=0.0, bias=True, tie_embeddings=True)
    train = TrainConfig(strategy="ddp", num_workers=1, batch_size=args.batch, micro_batch_size=args.batch,
                        learning_rate=lr, warmup_steps=warmup, max_steps=steps, weight_decay=0.0,
                        gradient_clipping=args.clip, precision="fp32", seed=args.seed)
    return model, train


def train_steps(model, train_cfg, batches, steps: int) -> tuple[list[float], list[float]]:
    """llmpipe's training step `steps` times over `batches` (a list of (inputs, targets), cycled):
    per-step seconds and losses."""
    import torch

    from llm.train.optim import build_optimizer
    from llm.train.parallel import ParallelContext, ParallelModel, clip_grads
    from llm.train.schedule import learning_rate

    device = torch.device("cpu")
    ctx = ParallelContext.create(train_cfg, device)
    parallel = ParallelModel(model, ctx, train_cfg)
    optimizer = build_optimizer(parallel.module, train_cfg, device, tied_output=True)
    parallel.module.train()
    times, losses = [], []
    for step in range(steps):
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, train_cfg)
        loss = parallel.forward_backward([batches[step % len(batches)]])
        if train_cfg.gradient_clipping > 0:
            clip_grads(parallel.module.parameters(), train_cfg.gradient_clipping, parallel.grad_norm())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(float(loss))
    return times, losses


def response_loss(model, inputs, targets, batch: int = 64) -> float:
    """Mean cross-entropy per response token over every row."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(inputs), batch):
            logits, _ = model(inputs[i : i + batch])
            y = targets[i : i + batch].reshape(-1)
            total += F.cross_entropy(logits.view(-1, logits.size(-1)), y, ignore_index=-100, reduction="sum").item()
            count += int((y != -100).sum())
    return total / count


def measure(args: argparse.Namespace) -> dict:
    """In this fresh process: fine-tune the base with one method, then evaluate on the held-out rows
    (with `--time-only N`: only time the first N steps)."""
    import torch

    from llm.model.gpt import GPT
    from llm.model.peft import apply_lora, trainable_counts

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    data = torch.load(work / "sft.pt", weights_only=True)
    lr = args.lora_lr if args.side == "lora" else args.full_lr
    model_cfg, train_cfg = configs(args, lr, args.steps, args.warmup)
    model = GPT(model_cfg)
    model.load_state_dict(torch.load(work / "base.pt", mmap=True, weights_only=True))
    if args.side == "lora":
        apply_lora(model, rank=args.rank, alpha=args.alpha, dropout=0.0, targets=PROJECT_TARGETS)
    trainable, total = trainable_counts(model)
    train = list(zip(data["train_inputs"], data["train_targets"]))
    build_peak, baseline = peak_mib(), rss_mib()
    reset_peak()
    times, losses = train_steps(model, train_cfg, train, args.time_only or args.steps)
    step_peak = peak_mib()
    if args.time_only:
        return {"side": args.side, "step_s": statistics.median(times[5:])}
    held = response_loss(model, data["held_inputs"], data["held_targets"])
    return {"side": args.side, "lr": lr, "trainable": trainable, "total": total, "step_s": statistics.median(times[5:]),
            "train_s": sum(times), "peak_mib": max(build_peak, step_peak), "baseline_mib": baseline,
            "delta_mib": step_peak - baseline,
            "first_loss": losses[0], "last_loss": statistics.mean(losses[-10:]), "held_out": held,
            "threads": torch.get_num_threads()}


def prepare(args: argparse.Namespace, work: Path) -> dict:
    """Split and tokenize the SFT rows, pretrain the base model; write both for the children."""
    import numpy as np
    import torch

    from llm.model.gpt import GPT

    rows = read_sft(args.data)
    train_rows = [r for r in rows if not held_out(r["id"], args.held_out)]
    held_rows = [r for r in rows if held_out(r["id"], args.held_out)]
    tok = train_tokenizer(train_rows, args.vocab_size)
    args.vocab = tok.vocab_size
    train_enc = encode_sft(tok, train_rows, args.context)
    held_enc = encode_sft(tok, held_rows, args.context)
    tr_in, tr_tg, _ = sft_tensors(train_enc, args.context)
    he_in, he_tg, _ = sft_tensors(held_enc, args.context)
    order = torch.from_numpy(np.random.default_rng(args.seed).permutation(len(tr_in)))
    n = min(args.steps * args.batch, len(order)) // args.batch * args.batch
    pick = order[:n].view(-1, args.batch)
    torch.save({"train_inputs": tr_in[pick], "train_targets": tr_tg[pick], "held_inputs": he_in, "held_targets": he_tg},
               work / "sft.pt")

    # Pretraining: every token of the training split's rows, one stream cut into full windows.
    stream = torch.tensor([t for seq, _ in train_enc for t in seq], dtype=torch.long)
    windows = stream[: len(stream) // (args.context + 1) * (args.context + 1)].view(-1, args.context + 1)
    g = torch.Generator().manual_seed(args.seed)
    pre = []
    for _ in range(args.pretrain_steps):
        idx = torch.randint(len(windows), (args.batch,), generator=g)
        pre.append((windows[idx, :-1], windows[idx, 1:]))
    model_cfg, train_cfg = configs(args, args.pretrain_lr, args.pretrain_steps, warmup=20)
    torch.manual_seed(args.seed)
    model = GPT(model_cfg)
    start = time.perf_counter()
    _, losses = train_steps(model, train_cfg, pre, args.pretrain_steps)
    base_held = response_loss(model, he_in, he_tg)
    torch.save(model.state_dict(), work / "base.pt")
    return {"rows": (len(train_enc), len(held_enc)), "pretrain_s": time.perf_counter() - start,
            "pretrain_loss": statistics.mean(losses[-10:]), "base_held_out": base_held,
            "response_tokens": (int((tr_tg[pick] != -100).sum()), int((he_tg != -100).sum()))}


def child_argv(args: argparse.Namespace, side: str, work: Path, time_only: int = 0) -> list[str]:
    argv = [__file__, "--side", side, "--work", str(work), "--time-only", str(time_only)]
    for key, value in vars(args).items():
        if key not in ("side", "work", "time_only"):
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=4096,
                        help="SentencePiece vocabulary trained on the training split")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps of each side")
    parser.add_argument("--warmup", type=int, default=10, help="linear warm-up steps of the fine-tune")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="pretraining steps of the shared base")
    parser.add_argument("--pretrain-lr", type=float, default=3e-3)
    parser.add_argument("--full-lr", type=float, default=1e-3)
    parser.add_argument("--lora-lr", type=float, default=3e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clipping; 0: none")
    parser.add_argument("--held-out", type=int, default=10, help="percent of the rows held out (by a hash of the id)")
    parser.add_argument("--threads", type=int, default=all_cores(), help="cores and intra-op threads of each side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=str(DEFAULT_SFT), help="SFT rows (JSONL with id, prompt and response)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="step-time runs per side, alternating, the fastest counts: the training run, then "
                        "runs of --time-steps steps")
    parser.add_argument("--time-steps", type=int, default=30, help="steps of each extra step-time run")
    parser.add_argument("--side", choices=["lora", "full"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--time-only", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_steps < 10:
        parser.error("--time-steps must be at least 10 (the first five are not timed)")
    if args.side is not None:
        print(json.dumps(measure(args)))
        return
    args.threads = pin(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-lora-full-") as tmp:
        work = Path(tmp)
        info = prepare(args, work)
        res = {side: run_child(child_argv(args, side, work)) for side in ("lora", "full")}
        timed = {side: [res[side]["step_s"]] for side in res}
        for i in range(1, args.repeat):
            for side in (("full", "lora") if i % 2 else ("lora", "full")):
                timed[side].append(run_child(child_argv(args, side, work, args.time_steps))["step_s"])
    for side in res:
        res[side]["step_s"] = min(timed[side])
    lora, full = res["lora"], res["full"]
    print(f"model: {args.layers} x {args.hidden}, {args.heads} heads, context {args.context}, vocab {args.vocab}; "
          f"batch {args.batch}; {args.steps} fine-tuning steps (warm-up {args.warmup}, cosine), fp32, "
          f"{args.threads} thread(s)")
    print(f"data: {info['rows'][0]} training rows / {info['rows'][1]} held-out rows ({args.held_out}% by id hash); "
          f"{info['response_tokens'][0]} response tokens trained on, {info['response_tokens'][1]} held out")
    print(f"base: {args.pretrain_steps} pretraining steps at lr {args.pretrain_lr:g} ({info['pretrain_s']:.0f} s, "
          f"train loss {info['pretrain_loss']:.3f}); held-out response loss {info['base_held_out']:.4f} "
          f"(ppl {math.exp(info['base_held_out']):.1f})")
    for label, r in (("LoRA (r=%d, alpha=%g)" % (args.rank, args.alpha), lora), ("full fine-tuning", full)):
        runs = ", ".join(f"{t * 1e3:.1f}" for t in timed[r["side"]])
        print(f"{label:20s} lr {r['lr']:g}: trainable {r['trainable']:,} of {r['total']:,}; "
              f"{r['step_s'] * 1e3:.1f} ms/step (runs: {runs}); peak RSS {r['peak_mib']:.0f} MiB "
              f"(+{r['delta_mib']:.0f} MiB over {r['baseline_mib']:.0f} after build); "
              f"train loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}; "
              f"held-out response loss {r['held_out']:.4f} (ppl {math.exp(r['held_out']):.1f})")
    print(f"LoRA/full: step time {lora['step_s'] / full['step_s']:.3f}, "
          f"peak RSS {lora['peak_mib'] / full['peak_mib']:.3f}, "
          f"rise over build {lora['delta_mib'] / full['delta_mib']:.3f}")
    print(f"held-out response loss LoRA relative to full: {(lora['held_out'] / full['held_out'] - 1) * 100:+.1f}% "
          f"(LoRA {lora['held_out']:.4f}, full {full['held_out']:.4f})")


if __name__ == "__main__":
    main()
