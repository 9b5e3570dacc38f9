"""Ray Train glue: the function every `TorchTrainer` worker runs, and how it reports checkpoints."""

from __future__ import annotations

import contextlib
import importlib
import logging
from typing import Any

import torch

from llm.config import ModelConfig, TrainConfig
from llm.train.loop import ResumeState, run_workload
from llm.train.workload import TokenWorkload, Workload

FINETUNE_WORKLOAD = "llm.finetune.workload"


def _ray_report(metrics: dict[str, Any], directory: str | None) -> None:
    import ray.train

    clean = {k: v for k, v in metrics.items() if v is not None}
    checkpoint = ray.train.Checkpoint.from_directory(directory) if directory else None
    ray.train.report(clean, checkpoint=checkpoint)


def workload_from(config: dict[str, Any]) -> tuple[Workload, TrainConfig]:
    """The workload and training settings a worker's `config` describes: a fine-tune when it has a
    `finetune` entry (see `llm.finetune.workload.FinetuneWorkload.from_config`), else pre-training."""
    if "finetune" in config:
        # Imported by name: pre-training never runs fine-tuning code, so its code digest (which follows
        # import statements) must not change when that code does.
        workload = importlib.import_module(FINETUNE_WORKLOAD).FinetuneWorkload.from_config(config)
        return workload, workload.train_cfg
    train_cfg = TrainConfig.model_validate(config["train"])
    model_cfg = ModelConfig.model_validate(config["model"])
    return TokenWorkload(model_cfg, train_cfg, config["tokens_uri"], frozenset(config.get("seen_parts", ())),
                         config.get("tokenizer")), train_cfg


def ray_train_worker(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker: `config` holds the two configs as dicts, `tokens_uri`
    and an optional `run_target`, `resume_from` (a checkpoint to start from), `seen_parts` and
    `sweep_trial` (a Ray Tune trial: report every evaluation, and the worker group's placement group),
    or a fine-tune's entries. Resumes from Ray Train's latest checkpoint of this run when there is one,
    else from `resume_from`."""
    import ray
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

    workload, train_cfg = workload_from(config)
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    resume = None
    checkpoint = ray.train.get_checkpoint()
    with contextlib.ExitStack() as stack:
        if checkpoint is not None:
            # Kept open while training: a sharded (DCP) checkpoint is read from this folder only after
            # the strategy has split the model, inside `train`.
            resume = ResumeState.load(stack.enter_context(checkpoint.as_directory()))
        elif config.get("resume_from"):  # the first attempt of a run that continues an earlier one
            resume = ResumeState.load(config["resume_from"])
        report = _ray_report
        if config.get("sweep_trial"):
            # Names the worker group's resources to the sweep, which frees them when the trial ends: the
            # Train run of a trial that Tune stops cannot.
            group = {"placement_group_id": ray.get_runtime_context().get_placement_group_id()}

            def report(metrics: dict[str, Any], directory: str | None) -> None:
                _ray_report({**metrics, **group}, directory)

        run_workload(workload, train_cfg, config.get("run_target"), device=device, resume=resume, report=report,
                     report_evals=bool(config.get("sweep_trial")))
