"""The per-worker training loop.

`train` runs in every Ray Train worker (`ray_train_worker` is the entry TorchTrainer calls) and, with no
process group, in-process as a world of one (unit tests, debugging). One optimizer step:

    for each micro-batch of this rank's slice of the global batch:   (DDP syncs only on the last)
        loss = model(x, y) / grad_accum; loss.backward()
    clip the global gradient norm; AdamW step at learning_rate(step)

Rank 0 logs and writes checkpoints; every rank evaluates its share of the validation batches.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from llm import storage
from llm.config import ModelConfig, TrainConfig
from llm.model.gpt import GPT
from llm.tracking import RunTarget
from llm.train.checkpoint import (
    load_model_state,
    load_optimizer_state,
    read_state,
    save_checkpoint,
    set_rng_state,
)
from llm.train.data import TokenDataset, TrainBatches
from llm.train.parallel import all_reduce_sum, parallelize, world
from llm.train.schedule import learning_rate
from llm.train.validation import validation_loss

log = logging.getLogger("llm.train")

#: Called on every rank at each checkpoint with the metrics so far and, on rank 0 only, a local
#: folder holding the checkpoint (valid only during the call; None on other ranks).
Reporter = Callable[[dict[str, Any], "str | None"], None]


@dataclass
class ResumeState:
    """What a run continues from: a checkpoint's model and optimizer state and its `state.json`."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    state: dict[str, Any]

    @classmethod
    def load(cls, checkpoint_uri: str) -> "ResumeState":
        return cls(
            model=load_model_state(checkpoint_uri),
            optimizer=load_optimizer_state(checkpoint_uri),
            state=read_state(checkpoint_uri),
        )


@dataclass
class TrainSummary:
    """Outcome of a training run (the same on every rank)."""

    steps: int
    final_train_loss: float | None
    initial_val_loss: float
    final_val_loss: float
    tokens_seen: int
    seconds: float


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: norms, biases and embedding tables are not decayed.

    Embeddings are excluded because decay pulls rare tokens' rows towards zero between their updates;
    with tied embeddings the output projection is the same tensor and follows.
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 and id(p) not in embedding_ids else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel (one launch for all parameters) exists for CUDA and CPU; foreach elsewhere.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused, foreach=None if fused else True
    )


def default_device(cfg: TrainConfig) -> torch.device:
    """GPU `cuda` when asked for and present, else CPU."""
    return torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")


def checkpoint_to(uri: str) -> Reporter:
    """A reporter that keeps the latest checkpoint in the folder `uri` (local or s3://), for runs outside Ray."""

    def report(metrics: dict[str, Any], directory: str | None) -> None:
        if directory is not None:
            storage.delete(uri)
            storage.upload_dir(directory, uri)

    return report


def _log_metrics(run_target: RunTarget | None, metrics: dict[str, float], step: int) -> None:
    if run_target is None:
        return
    try:
        run_target.log_metrics(metrics, step=step)
    except Exception as exc:  # metrics are observability: a tracking outage must not end a training run
        log.warning("could not log metrics to MLflow at step %d: %s", step, exc)


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    tokens_uri: str,
    run_target: RunTarget | None = None,
    *,
    device: torch.device | None = None,
    resume: ResumeState | None = None,
    report: Reporter | None = None,
) -> TrainSummary:
    """Train on `tokens_uri` in the current process group (or alone), returning the run's summary.

    Checkpoints go to `report` every `checkpoint_every` steps and at the end; `resume` continues a run
    from a checkpoint (the data order depends only on the step, so it continues exactly).
    """
    started = time.perf_counter()
    rank, world_size = world()
    device = device or default_device(train_cfg)
    dataset = TokenDataset(tokens_uri)
    if model_cfg.vocab_size is None:
        model_cfg = model_cfg.model_copy(update={"vocab_size": dataset.vocab_size})
    if model_cfg.vocab_size < dataset.vocab_size:
        raise ValueError(
            f"model vocab_size {model_cfg.vocab_size} is smaller than the token dataset's {dataset.vocab_size}"
        )
    micro_per_rank = train_cfg.micro_batch_size
    if train_cfg.batch_size % (micro_per_rank * world_size):
        raise ValueError(
            f"batch_size {train_cfg.batch_size} is not a multiple of micro_batch_size x workers "
            f"({micro_per_rank} x {world_size})"
        )
    grad_accum = train_cfg.batch_size // (micro_per_rank * world_size)
    tokens_per_step = train_cfg.batch_size * model_cfg.context_length

    # Same seed on every rank: identical initial weights without relying on a broadcast.
    torch.manual_seed(train_cfg.seed)
    model = GPT(model_cfg).to(device)
    optimizer = build_optimizer(model, train_cfg, device)
    step, initial_val_loss, last_loss, tokens_seen = 0, None, None, 0
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        step = int(resume.state["step"])
        initial_val_loss = resume.state.get("initial_val_loss")
        last_loss = resume.state.get("loss")
        tokens_seen = int(resume.state.get("tokens_seen", step * tokens_per_step))
        # The checkpoint holds rank 0's random state; the other ranks get a fresh stream of their own.
        if rank == 0:
            set_rng_state(resume.state.get("rng", {}))
        else:
            torch.manual_seed(train_cfg.seed + rank + 1_000_003 * step)
        if rank == 0:
            log.info("resuming from step %d", step)
    else:
        # Dropout masks differ between ranks (their data differs too); weights were drawn above.
        torch.manual_seed(train_cfg.seed + rank)
    wrapped = parallelize(model, train_cfg.strategy, device)
    is_ddp = wrapped is not model and hasattr(wrapped, "no_sync")

    autocast_dtype = torch.bfloat16 if train_cfg.precision == "bf16" else None
    train_split, val_split = dataset.split("train"), dataset.split("val")
    batches = TrainBatches(
        train_split, model_cfg.context_length, train_cfg.batch_size, micro_per_rank, train_cfg.seed, rank, world_size
    )

    def evaluate() -> float:
        loss, _ = validation_loss(
            model, val_split, model_cfg.context_length, micro_per_rank, train_cfg.eval_batches, device, autocast_dtype
        )
        return loss

    start_step = step
    val_loss = resume.state.get("val_loss") if resume is not None else None
    if initial_val_loss is None:
        initial_val_loss = val_loss = evaluate()
        if rank == 0:
            log.info("step 0 | val_loss %.4f | val_perplexity %.2f", val_loss, math.exp(val_loss))
            _log_metrics(
                run_target,
                {"val_loss": val_loss, "val_perplexity": math.exp(val_loss), "initial_val_loss": val_loss},
                0,
            )

    def save(step: int) -> None:
        metrics = {
            "step": step,
            "loss": last_loss,
            "val_loss": val_loss,
            "initial_val_loss": initial_val_loss,
            "tokens_seen": tokens_seen,
        }
        if report is None:
            return
        if rank != 0:
            report(metrics, None)
            return
        with tempfile.TemporaryDirectory(prefix="llmpipe-ckpt-") as folder:
            save_checkpoint(folder, model, optimizer, step, model_cfg, train_cfg, metrics)
            report(metrics, folder)

    model.train()
    window_start, window_tokens = time.perf_counter(), 0
    while step < train_cfg.max_steps:
        lr = learning_rate(step, train_cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for i, (inputs, targets) in enumerate(batches.micro_batches(step)):
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            # Gradients are all-reduced only after the last micro-batch: one sync per optimizer step.
            sync = not is_ddp or i == grad_accum - 1
            with contextlib.nullcontext() if sync else wrapped.no_sync():
                with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                    _, loss = wrapped(inputs, targets)
                # Equal-sized micro-batches: the mean of their means is the global batch's mean.
                (loss / grad_accum).backward()
            loss_sum += loss.detach()
        params = [p for p in model.parameters() if p.grad is not None]
        if train_cfg.gradient_clipping > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, train_cfg.gradient_clipping)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        window_tokens += tokens_per_step

        last_step = step == train_cfg.max_steps
        if step % train_cfg.log_every == 0 or last_step:
            # Mean over every micro-batch of every rank: the global batch's loss.
            total, = all_reduce_sum([loss_sum.item()], device)
            last_loss = total / (grad_accum * world_size)
            tokens_per_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)
            if rank == 0:
                log.info(
                    "step %d/%d | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s",
                    step, train_cfg.max_steps, last_loss, lr, grad_norm.item(), tokens_per_s,
                )
                _log_metrics(
                    run_target,
                    {"loss": last_loss, "lr": lr, "grad_norm": grad_norm.item(), "tokens_per_s": tokens_per_s},
                    step,
                )
        if step % train_cfg.eval_every == 0 or last_step:
            val_loss = evaluate()
            if rank == 0:
                log.info("step %d | val_loss %.4f | val_perplexity %.2f", step, val_loss, math.exp(val_loss))
                _log_metrics(run_target, {"val_loss": val_loss, "val_perplexity": math.exp(val_loss)}, step)
        if step % train_cfg.checkpoint_every == 0 or last_step:
            save(step)
        if step % train_cfg.log_every == 0 or step % train_cfg.eval_every == 0 or step % train_cfg.checkpoint_every == 0:
            # Throughput counts training only, not evaluation or checkpoint writing.
            window_start, window_tokens = time.perf_counter(), 0

    if start_step >= train_cfg.max_steps:  # resumed at the end: evaluate and report the final state again
        val_loss = evaluate()
        save(step)
    return TrainSummary(
        steps=step,
        final_train_loss=last_loss,
        initial_val_loss=float(initial_val_loss),
        final_val_loss=float(val_loss),
        tokens_seen=tokens_seen,
        seconds=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------------------- Ray Train


def _ray_report(metrics: dict[str, Any], directory: str | None) -> None:
    import ray.train

    clean = {k: v for k, v in metrics.items() if v is not None}
    checkpoint = ray.train.Checkpoint.from_directory(directory) if directory else None
    ray.train.report(clean, checkpoint=checkpoint)


def ray_train_worker(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker: `config` holds the two configs as dicts, `tokens_uri`
    and an optional `run_target`. Resumes from Ray Train's latest checkpoint when there is one."""
    import ray.train
    import ray.train.torch

    # Make the step lines visible in the worker's log (which Ray forwards to the driver): through the
    # root handler Ray Train installs, or a handler of our own where there is none.
    llm_log = logging.getLogger("llm")
    if llm_log.level == logging.NOTSET:
        llm_log.setLevel(logging.INFO)
    if not llm_log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
        llm_log.addHandler(handler)

    model_cfg = ModelConfig.model_validate(config["model"])
    train_cfg = TrainConfig.model_validate(config["train"])
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = ResumeState.load(folder)
    train(
        model_cfg,
        train_cfg,
        config["tokens_uri"],
        config.get("run_target"),
        device=device,
        resume=resume,
        report=_ray_report,
    )
