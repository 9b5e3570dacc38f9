"""Pre-training on Ray Train: a `TorchTrainer` over `llm.train.ray_worker.ray_train_worker`.

Uses the Ray Train API that `ray.train` / `ray.train.torch` export (V2 by default in Ray 2.60, V1 with
`RAY_TRAIN_V2_ENABLED=0`); only calls common to both are made: `TorchTrainer`, `ScalingConfig`,
`RunConfig`, `CheckpointConfig`, `FailureConfig`, and in the workers `ray.train.report` /
`ray.train.get_checkpoint`. The run's final metrics travel with its last checkpoint, which is how V2
exposes them (`Result.metrics` are the metrics of the latest checkpoint).

The Ray run is named after a hash of the resolved configs and the token dataset, so calling
`pretrain` again with the same inputs and output after a crash continues from the latest checkpoint,
while a changed config starts a new run beside it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from llm import storage
from llm.config import ModelConfig, TrainConfig, stable_hash
from llm.errors import UserError
from llm.tracking import RunTarget
from llm.train.checkpoint import read_state, tokenizer_record
from llm.train.data import TokenManifest
from llm.train.publish import log_loss_curve, register_model
from llm.train.ray_worker import ray_train_worker

log = logging.getLogger("llm.train")


@dataclass
class PretrainResult:
    """Outcome of `pretrain`: losses in nats per token, `checkpoint_uri` is `<output_uri>/final`."""

    steps: int
    final_train_loss: float | None
    initial_val_loss: float
    final_val_loss: float
    tokens_seen: int
    checkpoint_uri: str
    seconds: float
    #: Bits per byte of the final validation (None for token datasets without byte counts).
    final_val_bpb: float | None = None


def resolve_vocab(model_cfg: ModelConfig, tokens_uri: str) -> ModelConfig:
    """`model_cfg` with `vocab_size` from the token manifest when unset; an error when too small."""
    vocab = TokenManifest.read(tokens_uri).vocab_size
    if model_cfg.vocab_size is None:
        return model_cfg.model_copy(update={"vocab_size": vocab})
    if model_cfg.vocab_size < vocab:
        raise UserError(
            f"model.vocab_size ({model_cfg.vocab_size}) is smaller than the tokenizer's vocabulary ({vocab}) "
            f"used by {tokens_uri}: leave it empty to take it from the tokens"
        )
    return model_cfg


def check_parallel_fits(model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """Refuse, before any worker starts, a model the configured parallelism cannot split: inside Ray
    Train every worker would fail on its own, after the cluster's start-up cost."""
    from llm.model.gpt import mlp_hidden_size

    pp, tp = train_cfg.pipeline_parallel, train_cfg.tensor_parallel
    if pp > model_cfg.layers:
        raise UserError(f"train.pipeline_parallel {pp} is more than the model's {model_cfg.layers} layers "
                        "(model.layers)")
    if tp > 1 and (model_cfg.attention_heads % tp or mlp_hidden_size(model_cfg) % tp):
        raise UserError(f"train.tensor_parallel {tp} must divide model.attention_heads ({model_cfg.attention_heads}) "
                        f"and the MLP width ({mlp_hidden_size(model_cfg)})")


def run_name(model_cfg: ModelConfig, train_cfg: TrainConfig, tokens_uri: str) -> str:
    """Ray Train run name from the configs and the token dataset's version (what the tokens are, not
    where they live): the same inputs give the same name (and so resume), new tokens a new run."""
    from llm import versions

    manifest = versions.read(tokens_uri)
    tokens = manifest.get("version") or stable_hash(manifest)
    digest = stable_hash(
        {"model": model_cfg.model_dump(mode="json"), "train": train_cfg.model_dump(mode="json"), "tokens": tokens}
    )
    return f"pretrain-{digest}"


def pretrain(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    tokens_uri: str,
    output_uri: str,
    run_target: RunTarget | None = None,
    resume_from: str | None = None,
    seen_parts: frozenset[str] = frozenset(),
    tokenizer_uri: str | None = None,
) -> PretrainResult:
    """Train a model on the token dataset `tokens_uri` with Ray Train; checkpoints under `output_uri`.

    Ray's run folder is `<output_uri>/ray/<run name>`; the final checkpoint is copied to
    `<output_uri>/final/` (model.pt, state.json, and optimizer.pt or the fsdp/tp shards in sharded/).
    Metrics stream to `run_target` from rank 0. `resume_from` is a checkpoint the run starts from (its
    weights, optimizer state and step), and `seen_parts` the training-split parts left out because that
    run trained on them. `tokenizer_uri`: the tokenizer model file the tokens were made with, recorded in every
    checkpoint's `state.json` (`tokenizer`). Starts a local Ray only if none is running in this process.
    """
    started = time.perf_counter()
    output_uri = storage.absolute(output_uri)
    config = pretrain_loop_config(model_cfg, train_cfg, tokens_uri, run_target, resume_from, seen_parts,
                                  tokenizer_uri)
    model_cfg = ModelConfig.model_validate(config["model"])
    final_uri = fit_on_ray(config, train_cfg, run_name(model_cfg, train_cfg, config["tokens_uri"]), output_uri)
    state = read_state(final_uri)
    if run_target is not None:
        # Observability after the fact: a failure here must not lose a finished training run.
        try:
            log_loss_curve(run_target)
            if train_cfg.registered_model:
                version = register_model(
                    run_target, final_uri, train_cfg.registered_model, train_cfg.registered_model_alias
                )
                log.info("registered %s version %s as @%s", train_cfg.registered_model, version,
                         train_cfg.registered_model_alias)
        except Exception as exc:
            log.warning("could not publish the loss curve or the model to MLflow: %s", exc)
    return PretrainResult(
        steps=int(state["step"]),
        final_train_loss=state.get("loss"),
        initial_val_loss=float(state["initial_val_loss"]),
        final_val_loss=float(state["val_loss"]),
        tokens_seen=int(state["tokens_seen"]),
        checkpoint_uri=final_uri,
        seconds=time.perf_counter() - started,
        final_val_bpb=state.get("val_bpb"),
    )


def pretrain_loop_config(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    tokens_uri: str,
    run_target: RunTarget | None = None,
    resume_from: str | None = None,
    seen_parts: frozenset[str] = frozenset(),
    tokenizer_uri: str | None = None,
) -> dict:
    """What every Ray Train worker of a pretraining run is given (`ray_train_worker`'s `config`): the
    configs with `vocab_size` resolved from the tokens, checked to fit the parallelism, absolute paths
    (workers may run in other folders, or on other hosts) and the tokenizer's record for `state.json`."""
    tokens_uri = storage.absolute(tokens_uri)
    model_cfg = resolve_vocab(model_cfg, tokens_uri)
    check_parallel_fits(model_cfg, train_cfg)
    return {
        "model": model_cfg.model_dump(mode="json"),
        "train": train_cfg.model_dump(mode="json"),
        "tokens_uri": tokens_uri,
        "run_target": run_target,
        "resume_from": storage.absolute(resume_from) if resume_from else None,
        "seen_parts": sorted(seen_parts),
        "tokenizer": tokenizer_record(tokenizer_uri) if tokenizer_uri else None,
    }


def fit_on_ray(loop_config: dict, train_cfg: TrainConfig, name: str, output_uri: str) -> str:
    """Run `ray_train_worker` on `train_cfg.num_workers` Ray Train workers with `loop_config` and copy
    the run's last checkpoint to `<output_uri>/final`; returns that URI. The Ray run `name` resumes
    from its latest checkpoint when it exists under `<output_uri>/ray`. Starts a local Ray only if
    none is running in this process."""
    trainer = torch_trainer(loop_config, train_cfg, name, storage.join(output_uri, "ray"))
    result = trainer.fit()
    if result.error is not None:  # V1 returns the error; V2 raises it from fit()
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")

    final_uri = storage.join(output_uri, "final")
    with result.checkpoint.as_directory() as folder:
        storage.replace_dir(folder, final_uri)
    return final_uri


def torch_trainer(loop_config: dict, train_cfg: TrainConfig, name: str, storage_path: str, callbacks: list = ()):
    """The `TorchTrainer` of `ray_train_worker` on `train_cfg.num_workers` workers, its run `name` kept
    under `storage_path`, with Ray Train run `callbacks` (a Tune trial's report callback). Starts a local
    Ray only if none is running in this process."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    import ray
    from llm.cluster import ensure_ray, on_loopback, unforwarded_names

    if not ray.is_initialized():
        ensure_ray()
    torch_config = None
    if on_loopback():  # a local Ray: the process group's sockets stay on loopback too
        from llm.train.loopback import LoopbackTorchConfig

        torch_config = LoopbackTorchConfig()
    else:
        # The workers get the driver's environment (credentials, tracking server) through the job's
        # runtime_env, which `ensure_ray` fills and the Train controller and its workers inherit. Not
        # through Ray Train's own `worker_runtime_env`: Ray Train records that in its run state.
        missing = unforwarded_names()
        if missing:  # names only: the values may be secrets
            log.warning("Ray was started without %s in its runtime_env: training workers on other nodes "
                        "will not see them (let llmpipe start or join Ray, or set them on every node)",
                        ", ".join(missing))
    return TorchTrainer(
        ray_train_worker,
        train_loop_config=loop_config,
        torch_config=torch_config,
        scaling_config=ScalingConfig(
            num_workers=train_cfg.num_workers,
            use_gpu=train_cfg.use_gpu,
            resources_per_worker={"CPU": train_cfg.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            # Two: the latest, and the one before it in case the latest was being written when a
            # worker died.
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=train_cfg.max_failures),
            callbacks=list(callbacks) or None,
        ),
    )
