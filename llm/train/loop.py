"""The per-worker training loop.

`train` runs in every Ray Train worker (`llm.train.ray_worker.ray_train_worker` is the entry that
TorchTrainer calls) and, with no process group, in-process as a world of one (unit tests, debugging).
One optimizer step:

    forward/backward over this rank's micro-batches       (ParallelModel: gradient sync on the last)
    global gradient norm over all shards and stages        (the same on every rank)
    judge the step (NaN/inf, spikes): apply, skip, or roll back to the last checkpoint at a lower rate
    clip to `gradient_clipping`; AdamW step at learning_rate(step)

Rank 0 logs and writes checkpoints (every rank writes its own shards under fsdp/tp); every rank
evaluates its share of the validation batches.
"""

from __future__ import annotations

import copy
import logging
import math
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from llm import storage
from llm.config import ModelConfig, TrainConfig
from llm.errors import UserError
from llm.tracking import RunTarget
from llm.train.checkpoint import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    load_model_state,
    load_optimizer_state,
    read_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from llm.train.optim import build_optimizer
from llm.train.guard import EarlyStopping, StepGuard
from llm.train.mfu import ImplausibleMFU, device_peak_flops, mfu
from llm.train.parallel import ParallelContext, ParallelModel, all_reduce_sum, clip_grads, world
from llm.train.parallel.optim_state import NAMED_FORMAT, full_optimizer_state, load_full_optimizer_state
from llm.train.parallel.sharded_checkpoint import DCP_FORMAT, SHARDED_DIR, load_sharded, save_sharded
from llm.train.schedule import learning_rate
from llm.train.system_metrics import SystemMetrics
from llm.train.validation import HeldOutScore
from llm.train.workload import TokenWorkload, Workload

log = logging.getLogger("llm.train")

#: Called on every rank at each checkpoint with the metrics so far and a local folder holding the
#: checkpoint (valid only during the call): on rank 0 only (None on other ranks), except under fsdp/tp,
#: where every rank's folder holds its DCP shards and the folders together are the checkpoint. With
#: `report_evals`, also at each evaluation between checkpoints, with no folder on any rank.
Reporter = Callable[[dict[str, Any], "str | None"], None]


@dataclass
class ResumeState:
    """What a run continues from: a checkpoint's model and optimizer state and its `state.json`.

    For a sharded (DCP) checkpoint `model` and `optimizer` are None and `sharded_dir` is the local DCP
    folder, read after the strategy has split the model: it must stay in place until `train` has begun.
    """

    model: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any] | None
    state: dict[str, Any]
    sharded_dir: str | None = None
    #: Keeps a downloaded copy of a remote DCP folder alive as long as this object.
    _download: Any = None

    @classmethod
    def load(cls, checkpoint_uri: str) -> "ResumeState":
        state = read_state(checkpoint_uri)
        if state.get("optimizer_format") == DCP_FORMAT:
            remote = storage.join(checkpoint_uri, SHARDED_DIR)
            if not storage.is_s3(remote):
                return cls(model=None, optimizer=None, state=state, sharded_dir=remote)
            # DCP's file reader reads local folders: fetch the shards (all ranks' files) once.
            download = tempfile.TemporaryDirectory(prefix="llmpipe-resume-")
            storage.download_dir(remote, download.name)
            return cls(model=None, optimizer=None, state=state, sharded_dir=download.name, _download=download)
        has_optimizer = storage.exists(storage.join(checkpoint_uri, OPTIMIZER_FILE))
        return cls(
            model=load_model_state(checkpoint_uri, weights_file=state.get("weights_file", MODEL_FILE)),
            optimizer=load_optimizer_state(checkpoint_uri) if has_optimizer else None,
            state=state,
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
    #: One entry per logged step: step, loss, lr, grad_norm (global values, the same on every rank).
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_steps: int = 0
    rollbacks: int = 0
    #: fp16 steps GradScaler skipped because the scaled gradients overflowed (not bad steps).
    overflow_steps: int = 0
    #: Bits per byte of the final validation (None for token datasets without byte counts).
    final_val_bpb: float | None = None


def default_device(cfg: TrainConfig) -> torch.device:
    """GPU `cuda` when asked for and present, else CPU."""
    return torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")


def checkpoint_to(uri: str) -> Reporter:
    """A reporter that keeps the latest checkpoint in the folder `uri` (local or s3://), for runs outside Ray."""

    def report(metrics: dict[str, Any], directory: str | None) -> None:
        if directory is None:
            return
        rank, world_size = world()
        if world_size == 1 or not (Path(directory) / SHARDED_DIR).is_dir():
            storage.replace_dir(directory, uri)  # the old checkpoint stays until the new one is whole
            return
        # A sharded checkpoint: every rank holds a part (and so reports a folder). Rank 0 clears the
        # old checkpoint before any rank writes, and all parts are in place when any rank returns.
        import torch.distributed as dist

        if rank == 0:
            storage.delete(uri)
        dist.barrier()
        storage.upload_dir(directory, uri)
        dist.barrier()

    return report


def _log_metrics(run_target: RunTarget | None, metrics: dict[str, float], step: int) -> None:
    if run_target is None:
        return
    try:
        run_target.log_metrics(metrics, step=step)
    except Exception as exc:  # metrics are observability: a tracking outage must not end a training run
        log.warning("could not log metrics to MLflow at step %d: %s", step, exc)


def _held_out_metrics(score: HeldOutScore) -> dict[str, float]:
    """The validation metrics of a score: `val_loss`, `val_perplexity` and, where the token dataset
    records bytes of text, `val_bpb` (bits per byte, comparable across tokenizers)."""
    metrics = {"val_loss": score.loss, "val_perplexity": score.perplexity}
    if score.bits_per_byte is not None:
        metrics["val_bpb"] = score.bits_per_byte
    return metrics


def _held_out_line(score: HeldOutScore) -> str:
    line = f"val_loss {score.loss:.4f} | val_perplexity {score.perplexity:.2f}"
    return line if score.bits_per_byte is None else f"{line} | val_bpb {score.bits_per_byte:.4f}"


def _memory_mib(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA allocator peak on GPU, peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _snapshot(module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """In-memory copy of weights and optimizer state to roll back to (this rank's shards)."""
    weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
    return weights, copy.deepcopy(optimizer.state_dict())


def _host_copy(value: Any) -> Any:
    """A deep copy of a (nested) state dict with plain tensors on the CPU, so that a kept copy costs
    no accelerator memory; DTensor shards stay on their devices (they load back only onto their mesh)."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        return value.detach().clone()
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _host_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_host_copy(v) for v in value)
    return copy.deepcopy(value)


@dataclass
class _Best:
    """This rank's whole training state at the best evaluation so far (early stopping), to end on."""

    step: int
    weights: dict[str, Any]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    tokens_seen: int
    loss: float | None
    val_bpb: float | None = None


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    tokens_uri: str,
    run_target: RunTarget | None = None,
    *,
    device: torch.device | None = None,
    resume: ResumeState | None = None,
    report: Reporter | None = None,
    seen_parts: frozenset[str] = frozenset(),
    tokenizer: dict[str, str] | None = None,
) -> TrainSummary:
    """Train on `tokens_uri` in the current process group (or alone), returning the run's summary.
    `seen_parts` are training-split parts left out (an earlier run trained on them); `tokenizer`, the
    tokens' tokenizer (`tokenizer_record`), is recorded in every checkpoint's `state.json`.

    Checkpoints go to `report` every `checkpoint_every` steps and at the end; `resume` continues a run
    from a checkpoint (the data order depends only on the step, so it continues exactly). With
    `train.system_metrics`, rank 0 samples its host's CPU, memory (and GPU) into `run_target` meanwhile.
    """
    workload = TokenWorkload(model_cfg, train_cfg, tokens_uri, seen_parts, tokenizer)
    return run_workload(workload, train_cfg, run_target, device=device, resume=resume, report=report)


def run_workload(
    workload: Workload,
    train_cfg: TrainConfig,
    run_target: RunTarget | None = None,
    *,
    device: torch.device | None = None,
    resume: ResumeState | None = None,
    report: Reporter | None = None,
    report_evals: bool = False,
) -> TrainSummary:
    """Train `workload` (pre-training or fine-tuning) with `train_cfg`, as `train` does. With
    `report_evals`, every evaluation between checkpoints also goes to `report` (metrics only, no
    folder): a scheduler that stops runs early (Ray Tune's ASHA) judges them on each validation loss."""
    rank, _ = world()
    # One sampler per run, on rank 0: its metric names carry no rank, so two would mix their samples.
    with SystemMetrics(run_target if rank == 0 else None, enabled=train_cfg.system_metrics):
        return _train(workload, train_cfg, run_target, device=device, resume=resume, report=report,
                      report_evals=report_evals)


def _train(
    workload: Workload,
    train_cfg: TrainConfig,
    run_target: RunTarget | None,
    *,
    device: torch.device | None,
    resume: ResumeState | None,
    report: Reporter | None,
    report_evals: bool = False,
) -> TrainSummary:
    """The body of `run_workload`."""
    started = time.perf_counter()
    rank, world_size = world()
    device = device or default_device(train_cfg)
    model_cfg = workload.model_cfg
    ctx = ParallelContext.create(train_cfg, device)
    micro_per_rank = train_cfg.micro_batch_size
    if train_cfg.batch_size % (micro_per_rank * ctx.dp):
        raise ValueError(
            f"batch_size {train_cfg.batch_size} is not a multiple of micro_batch_size x data-parallel workers "
            f"({micro_per_rank} x {ctx.dp})"
        )
    tokens_per_step = train_cfg.batch_size * model_cfg.context_length

    # Same seed on every rank: identical initial weights without relying on a broadcast.
    torch.manual_seed(train_cfg.seed)
    model = workload.build_model(device)
    flops_per_token = model.flops_per_token()
    step, initial_val_loss, last_loss, tokens_seen = 0, None, None, 0
    if resume is not None and resume.model is not None:
        # Full (unsharded) weights load before the strategy splits them.
        workload.load_weights(model, resume.model)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train_cfg.precision)
    parallel = ParallelModel(model, ctx, train_cfg, autocast_dtype, gathered_checkpoints=workload.gathered_checkpoints)
    optimizer = build_optimizer(parallel.module, train_cfg, device, tied_output=model_cfg.tie_embeddings)
    # fp16 only (GPU, ddp): scale the loss so small gradients do not flush to zero; bf16 has fp32's range.
    scaler = torch.amp.GradScaler(device.type) if train_cfg.precision == "fp16" else None
    if resume is not None:
        written = resume.state.get("optimizer_format")
        wanted = DCP_FORMAT if parallel.distributed_checkpoint else NAMED_FORMAT if parallel.sharded else None
        saved_cfg = resume.state.get("train_config", {})
        if written != wanted or (written != DCP_FORMAT and resume.optimizer is None):
            raise UserError(
                f"the checkpoint's optimizer state was written by strategy "
                f"{saved_cfg.get('strategy')!r} and cannot resume {train_cfg.strategy!r}"
            )
        if written == DCP_FORMAT:
            if saved_cfg.get("tensor_parallel", 1) != train_cfg.tensor_parallel:
                # The fused qkv rows of a tensor-parallel shard are laid out for its degree.
                raise UserError(
                    f"a sharded checkpoint written with tensor_parallel {saved_cfg.get('tensor_parallel', 1)} "
                    f"cannot resume with tensor_parallel {train_cfg.tensor_parallel}"
                )
            load_sharded(parallel, optimizer, resume.sharded_dir)
        elif written == NAMED_FORMAT:
            load_full_optimizer_state(parallel, optimizer, resume.optimizer)
        else:
            optimizer.load_state_dict(resume.optimizer)
        step = int(resume.state["step"])
        initial_val_loss = resume.state.get("initial_val_loss")
        last_loss = resume.state.get("loss")
        tokens_seen = int(resume.state.get("tokens_seen", step * tokens_per_step))
        # Every rank continues its own random stream (dropout masks) where it stopped. A checkpoint
        # from another world size has no state for this rank: rank 0 takes the saved one, the others a
        # fresh stream of their own.
        per_rank = resume.state.get("rng_per_rank") or []
        if len(per_rank) == world_size:
            set_rng_state(per_rank[rank])
        elif rank == 0:
            set_rng_state(resume.state.get("rng", {}))
        else:
            torch.manual_seed(train_cfg.seed + rank + 1_000_003 * step)
        if rank == 0:
            log.info("resuming from step %d", step)
    else:
        # Dropout masks differ between data-parallel replicas (their data differs too), and are the
        # same within a tensor-parallel group (replicated activations must stay identical; attention
        # on each rank's heads reseeds from this stream per rank, see apply_tensor_parallel).
        torch.manual_seed(train_cfg.seed + ctx.dp_rank + 7919 * ctx.pp_rank)

    batches = workload.batches(ctx)
    peak = device_peak_flops(device, train_cfg.precision)
    guard = StepGuard(train_cfg.spike_factor, train_cfg.rollback_after)
    stopper = EarlyStopping(train_cfg.early_stopping_patience, train_cfg.early_stopping_min_delta)
    best: _Best | None = None
    lr_scale = 1.0
    tokens_per_s = None  # of the latest logging window (training only)
    implausible_mfu = 0  # readings above 100% (a wrong FLOP count or device peak), not logged as MFU
    history: list[dict[str, float]] = []

    def evaluate(step: int, report: bool = True) -> float:
        """The held-out loss now; with `report`, rank 0 logs it (and bits per byte where the data
        allows) as `step`'s."""
        nonlocal val_bpb
        score = workload.held_out_score(parallel, device, autocast_dtype)
        val_bpb = score.bits_per_byte
        if rank == 0 and report:
            log.info("step %d | %s", step, _held_out_line(score))
            _log_metrics(run_target, _held_out_metrics(score), step)
        return score.loss

    start_step = step
    val_loss = resume.state.get("val_loss") if resume is not None else None
    val_bpb = resume.state.get("val_bpb") if resume is not None else None
    initial_val_bpb = resume.state.get("initial_val_bpb") if resume is not None else None
    if initial_val_loss is None:
        initial_val_loss = val_loss = evaluate(0)
        initial_val_bpb = val_bpb
        if rank == 0:
            _log_metrics(run_target, {"initial_val_loss": val_loss}, 0)

    def save(step: int, **extra: Any) -> None:
        metrics = {
            "step": step,
            "loss": last_loss,
            "val_loss": val_loss,
            "val_bpb": val_bpb,
            "initial_val_loss": initial_val_loss,
            "initial_val_bpb": initial_val_bpb,
            "tokens_seen": tokens_seen,
            "tokens_per_s": tokens_per_s,
            **extra,
        }
        meta = {**workload.checkpoint_metadata(), "rng_per_rank": None}
        if report is None:
            return
        # Every rank's random state goes into state.json (a collective: every rank is here). Kept out of
        # the reported metrics, which are small numbers.
        meta["rng_per_rank"] = _gather_rng_states(world_size)
        weights_file = workload.weights_file
        if parallel.distributed_checkpoint:
            # Every rank writes its model and optimizer shards (DCP); rank 0 adds the full model.pt that
            # evaluation and export read, and state.json. Both are collectives: every rank takes part.
            metrics["optimizer_format"] = DCP_FORMAT
            with tempfile.TemporaryDirectory(prefix="llmpipe-ckpt-") as folder:
                save_sharded(parallel, optimizer, folder)
                full = workload.checkpoint_weights(parallel.full_state_dict())
                if rank == 0:
                    save_checkpoint(folder, full, None, step, model_cfg, train_cfg, {**metrics, **meta}, weights_file)
                del full
                report(metrics, folder)
            return
        # Gathering sharded weights and optimizer state is a collective: every rank takes part, rank 0 writes.
        state = workload.checkpoint_weights(parallel.full_state_dict())
        optim_state: Any = optimizer
        if parallel.sharded:
            optim_state = full_optimizer_state(parallel, optimizer)
            metrics["optimizer_format"] = NAMED_FORMAT
        if rank != 0:
            report(metrics, None)
            return
        with tempfile.TemporaryDirectory(prefix="llmpipe-ckpt-") as folder:
            save_checkpoint(folder, state, optim_state, step, model_cfg, train_cfg, {**metrics, **meta}, weights_file)
            report(metrics, folder)

    rollback_to = _snapshot(parallel.module, optimizer) if train_cfg.rollback_after else None
    parallel.module.train()
    window_start, window_tokens = time.perf_counter(), 0
    step_loss = math.nan  # computed on judged and logged steps
    while step < train_cfg.max_steps:
        lr = learning_rate(step, train_cfg) * lr_scale
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro, weights = batches.step(step)
        micro = [tuple(t.to(device, non_blocking=True) for t in batch) for batch in micro]
        loss_sum = parallel.forward_backward(micro, scaler, weights)
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip and judge the true gradients
        grad_norm = parallel.grad_norm()
        # An fp16 overflow (the global norm, the same on every rank): GradScaler skips the step and
        # lowers its scale. The guard counts it apart and never skips or rolls back for it.
        overflow = scaler is not None and not math.isfinite(float(grad_norm))
        judge = train_cfg.spike_factor > 0 or train_cfg.rollback_after > 0
        if judge or (step + 1) % train_cfg.log_every == 0 or step + 1 == train_cfg.max_steps:
            # Mean over every micro-batch of every data-parallel replica: the global batch's loss.
            total, = all_reduce_sum([loss_sum.item() if ctx.reports else 0.0], device)
            step_loss = total / ctx.dp
        verdict = guard.check(step_loss, float(grad_norm), overflow) if judge or overflow else "ok"
        if verdict == "ok":
            if train_cfg.gradient_clipping > 0:
                clip_grads(parallel.module.parameters(), train_cfg.gradient_clipping, grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        elif scaler is not None:
            scaler.update()  # closes the step that unscale_ opened, or the next unscale_ raises
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        window_tokens += tokens_per_step
        if verdict != "ok":
            if verdict == "rollback" and rollback_to is not None:
                parallel.module.load_state_dict(rollback_to[0])
                optimizer.load_state_dict(copy.deepcopy(rollback_to[1]))
                lr_scale *= train_cfg.rollback_lr_factor
            if rank == 0:
                log.warning(
                    "step %d | %s (loss %.4g, grad_norm %.4g)%s", step,
                    "rolled back to the last checkpoint" if verdict == "rollback" else "skipped a bad step",
                    step_loss, float(grad_norm), f", lr x{lr_scale:g}" if verdict == "rollback" else "",
                )
                _log_metrics(
                    run_target,
                    {"bad_step": 1.0, "skipped_steps": guard.skipped, "rollbacks": guard.rollbacks, "lr_scale": lr_scale},
                    step,
                )
        if overflow and rank == 0:
            log.info("step %d | fp16 overflow: step skipped, loss scale now %g", step, scaler.get_scale())
            _log_metrics(run_target, {"overflow_skips": guard.overflows, "loss_scale": scaler.get_scale()}, step)

        last_step = step == train_cfg.max_steps
        if step % train_cfg.log_every == 0 or last_step:
            last_loss = step_loss
            seconds = max(time.perf_counter() - window_start, 1e-9)
            tokens_per_s = window_tokens / seconds
            try:
                utilisation = mfu(flops_per_token, tokens_per_s, world_size, peak)
            except ImplausibleMFU as exc:
                # The figure is wrong, not the training: count such readings and say why once.
                utilisation = None
                implausible_mfu += 1
                if implausible_mfu == 1 and rank == 0:
                    log.warning("%s (counted as mfu_implausible, not logged as mfu)", exc)
            memory = _memory_mib(device)
            history.append({"step": step, "loss": last_loss, "lr": lr, "grad_norm": float(grad_norm)})
            if rank == 0:
                log.info(
                    "step %d/%d | loss %.4f | lr %.3e | grad_norm %.3f | %.0f tok/s | mfu %s | mem %.0f MiB",
                    step, train_cfg.max_steps, last_loss, lr, float(grad_norm), tokens_per_s,
                    "n/a" if utilisation is None else f"{utilisation:.1%}", memory,
                )
                metrics = {"loss": last_loss, "lr": lr, "grad_norm": float(grad_norm), "tokens_per_s": tokens_per_s,
                           "step_seconds": seconds / max(window_tokens // tokens_per_step, 1), "memory_mib": memory}
                if utilisation is not None:
                    metrics["mfu"] = utilisation
                if implausible_mfu:
                    metrics["mfu_implausible"] = implausible_mfu
                _log_metrics(run_target, metrics, step)
        stop = False
        if step % train_cfg.eval_every == 0 or last_step:
            val_loss = evaluate(step)
            if train_cfg.early_stopping_patience:
                stop = stopper(val_loss)
                if stopper.improved:
                    # The whole state, not only the weights: the final checkpoint is then that step's,
                    # and a run resumed from it continues from there (optimizer moments, schedule, data).
                    best = _Best(step, _host_copy(parallel.module.state_dict()), _host_copy(optimizer.state_dict()),
                                 rng_state(), tokens_seen, last_loss, val_bpb)
            checkpoints_now = stop or last_step or step % train_cfg.checkpoint_every == 0
            if report_evals and report is not None and not checkpoints_now:
                # Every rank reports (Ray Train's report is a barrier); a checkpoint's report carries these too.
                report({"step": step, "val_loss": val_loss, "val_bpb": val_bpb, "loss": last_loss,
                        "tokens_seen": tokens_seen}, None)
        if stop or (last_step and best is not None):
            # The run ends on the best evaluation's state: the final checkpoint holds its weights.
            if rank == 0 and stop:
                log.info("early stop at step %d: best val_loss %.4f at step %d", step, stopper.best_loss, best.step)
            parallel.module.load_state_dict(best.weights)
            optimizer.load_state_dict(best.optimizer)
            set_rng_state(best.rng)
            val_loss, val_bpb = stopper.best_loss, best.val_bpb
            save(best.step, loss=best.loss, tokens_seen=best.tokens_seen, best_step=best.step, early_stopped=stop)
            break
        if step % train_cfg.checkpoint_every == 0 or last_step:
            save(step)
            if rollback_to is not None:
                rollback_to = _snapshot(parallel.module, optimizer)
        if step % train_cfg.log_every == 0 or step % train_cfg.eval_every == 0 or step % train_cfg.checkpoint_every == 0:
            # Throughput counts training only, not evaluation or checkpoint writing.
            window_start, window_tokens = time.perf_counter(), 0

    if start_step >= train_cfg.max_steps:  # resumed at the end: evaluate and report the final state again
        val_loss = evaluate(step, report=False)
        save(step)
    return TrainSummary(
        steps=step,
        final_train_loss=last_loss,
        initial_val_loss=float(initial_val_loss),
        final_val_loss=float(val_loss),
        tokens_seen=tokens_seen,
        seconds=time.perf_counter() - started,
        history=history,
        skipped_steps=guard.skipped,
        rollbacks=guard.rollbacks,
        overflow_steps=guard.overflows,
        final_val_bpb=val_bpb,
    )


def _gather_rng_states(world_size: int) -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (a collective when world_size > 1)."""
    if world_size == 1:
        return [rng_state()]
    import torch.distributed as dist

    states: list[Any] = [None] * world_size
    dist.all_gather_object(states, rng_state())
    return states
