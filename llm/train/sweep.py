"""Hyperparameter sweeps of pretraining on Ray Tune: one Ray Train run per trial, stopped early by ASHA.

    llmpipe sweep configs/demo.yaml --param train.learning_rate=loguniform:1e-4:1e-2 \\
        --param model.layers=choice:2,4 --samples 8 --scheduler asha

Each trial is a Tune function trainable that runs the project's `TorchTrainer` (the Ray Train V2 way of
training inside Tune: the trainer's `TuneReportCallback` passes what rank 0 reports on to Tune). The
workers report the validation loss at every `train.eval_every` steps, which is what ASHA compares trials
on. Trials train on the current token dataset of the work directory, as `llmpipe pretrain` does.

MLflow: a parent run for the sweep (its space and settings as parameters, the best trial, the results
table and the best config as artifacts) and a nested run per trial (the sampled values and the full
resolved config as parameters, train and validation loss curves as metrics).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from pydantic import Field
from ray import tune

from llm import storage
from llm.config import ConfigError, PipelineConfig, Section, TrainConfig, stable_hash
from llm.data.dataset import read_manifest
from llm.errors import InputNotFound, without_password
from llm.layout import Layout
from llm.lineage import of_input, redact
from llm.tracking import Tracker
from llm.train.search_space import ParamSpec, field_value, with_values
from llm.train.sweep_results import (TrialOutcome, best_trial, outcome_of, record_sweep, results_table,
                                     shown_value)

log = logging.getLogger(__name__)

#: Tag naming a trial's Tune id on its MLflow run.
TRIAL_TAG = "llmpipe.sweep.trial_id"
#: Memory a trial's driver process reserves (it imports torch and Ray Train; measured ~250 MiB resident).
TRIAL_DRIVER_MEMORY = 256 * 2**20


class SweepConfig(Section):
    """How a sweep samples and schedules its trials (the `llmpipe sweep` options)."""

    samples: int = Field(4, ge=1, le=10_000, description="Trials: configs sampled from the space.")
    scheduler: Literal["asha", "fifo"] = Field(
        "asha", description="`asha`: stop trials whose validation loss trails the others' at each rung "
        "(asynchronous successive halving); `fifo`: run every trial to `train.max_steps`.")
    metric: Literal["val_loss", "loss"] = Field(
        "val_loss", description="What trials are compared on, lower is better: validation loss at each "
        "evaluation, or the training loss there (needs `train.eval_every` a multiple of `train.log_every`).")
    max_concurrent: int | None = Field(
        None, ge=1, description="Trials running at once. Empty: as many as the Ray cluster's CPUs (and GPUs, "
        "with `train.use_gpu`) hold at `train.num_workers` x `train.cpus_per_worker` each.")
    grace_period: int | None = Field(
        None, ge=1, description="ASHA: steps every trial trains before it can be stopped (the first rung). "
        "Empty: `train.eval_every`.")
    reduction_factor: float = Field(
        2.0, gt=1, description="ASHA: rungs are grace_period x factor^k steps apart, and a trial continues "
        "past a rung only within the best 1/factor of the trials that reached it.")
    seed: int | None = Field(None, description="Seed of the sampling; the same seed draws the same trials. "
                             "Empty: `train.seed`.")


@dataclass
class SweepResult:
    """What `run_sweep` leaves: the trials, the best one, where its config was written, the MLflow run."""

    name: str
    uri: str
    metric: str
    trials: list[TrialOutcome]
    best: TrialOutcome
    best_config_uri: str
    specs: list[ParamSpec] = field(default_factory=list)
    parent_run_id: str | None = None
    tracking_uri: str | None = None

    def table(self) -> str:
        """The trials as a text table, best first by the metric, failed ones last."""
        return results_table(self.trials, self.specs, self.metric)

    def summary(self) -> str:
        """What `llmpipe sweep` prints: the best trial, where its config is, the table, the MLflow run."""
        best = self.best
        values = ", ".join(f"{k}={shown_value(v)}" for k, v in best.values.items())
        lines = [f"{self.name}: {len(self.trials)} trials, "
                 f"{sum(t.outcome == 'stopped early' for t in self.trials)} stopped early, output {self.uri}",
                 f"best trial {best.trial_id}: {self.metric} {best.metric:.4f} at step {best.steps} ({values})",
                 f"best config: {self.best_config_uri}  (llmpipe pretrain {self.best_config_uri})", "",
                 self.table()]
        if self.parent_run_id:
            lines += ["", f"MLflow: sweep run {self.parent_run_id} in {without_password(self.tracking_uri or '')}"]
        return "\n".join(lines)


def sweep_settings(**options: Any) -> SweepConfig:
    """`SweepConfig` from the command's options; a `ConfigError` naming the option on a bad value."""
    from pydantic import ValidationError

    try:
        return SweepConfig(**options)
    except ValidationError as exc:
        problems = "; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']} (got {e.get('input')!r})"
                             for e in exc.errors())
        raise ConfigError(f"invalid sweep option: {problems}") from None


def current_tokens(layout: Layout) -> str:
    """The current token dataset, pinned to its version: the one `llmpipe pretrain` would train on."""
    try:
        version, _ = of_input(read_manifest(layout.tokens))
    except InputNotFound:
        raise InputNotFound(f"no token dataset at {layout.tokens}: make it first with `llmpipe tokenize CONFIG` "
                            "(or the whole data half, `llmpipe data CONFIG`), then sweep") from None
    from llm import versions

    return versions.pinned(layout.tokens, version)


def run_sweep(cfg: PipelineConfig, specs: list[ParamSpec], settings: SweepConfig,
              out: str | None = None) -> SweepResult:
    """Sample `settings.samples` configs from `specs` over `cfg`, pretrain each as a Tune trial, and
    write the best trial's full config as YAML to `out` (default `<work_dir>/sweeps/<name>/best.yaml`)."""
    from llm.cluster import ensure_ray

    train = cfg.train
    if settings.metric == "loss" and train.eval_every % train.log_every:
        raise ConfigError(f"--metric loss needs train.eval_every ({train.eval_every}) to be a multiple of "
                          f"train.log_every ({train.log_every}): each evaluation then has a fresh training loss")
    grace = settings.grace_period or train.eval_every
    if settings.scheduler == "asha" and grace > train.max_steps:
        raise ConfigError(f"--grace-period {grace} is more than train.max_steps ({train.max_steps})")
    layout = Layout.for_work_dir(cfg.work_dir)
    tokens_uri = current_tokens(layout)
    space = {spec.path: spec.spec for spec in specs}
    name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{stable_hash([space, settings.model_dump()])[:6]}"
    sweep_uri = storage.join(layout.work_dir, "sweeps", name)
    out = storage.absolute(out) if out else storage.join(sweep_uri, "best.yaml")

    ensure_ray(cfg.ray)
    concurrent = settings.max_concurrent or trials_that_fit(train)
    tracker = Tracker(cfg.tracking, cfg.work_dir, cfg.ray.address)
    parent = tracker.start_run(f"{cfg.name}-sweep", tags={"llmpipe.sweep": name}, params={
        "sweep": {**settings.model_dump(mode="json"), "max_concurrent": concurrent, "grace_period": grace,
                  "seed": _seed(settings, cfg), "space": space, "tokens": tokens_uri}})
    if parent is not None:
        tracker.experiment_id()  # resolved here once: the trials' runs go to the same experiment
    log.info("%s: %d trials, %d at a time, over %s; output %s", name, settings.samples, concurrent,
             ", ".join(f"{k}={v}" for k, v in space.items()), sweep_uri)
    context = {"base": cfg, "tokens_uri": tokens_uri, "trials_uri": storage.join(sweep_uri, "trials"),
               "tracker": tracker if parent is not None else None,
               "parent_run_id": parent.run_id if parent is not None else None}
    ok = False
    try:
        tuner = tune.Tuner(
            # A trial only drives its Ray Train workers, which hold the CPUs: it reserves no CPU (Tune's
            # default of one would leave a 2-core machine a single trial), only its process's memory.
            tune.with_resources(tune.with_parameters(run_trial, context=context),
                                {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY}),
            param_space={spec.path: spec.domain() for spec in specs},
            tune_config=tune.TuneConfig(
                metric=settings.metric, mode="min", num_samples=settings.samples,
                scheduler=_scheduler(settings, grace, train.max_steps),
                # Random search limits its own concurrency (Tune ignores `max_concurrent_trials` for it).
                search_alg=tune.search.BasicVariantGenerator(max_concurrent=concurrent,
                                                             random_state=_seed(settings, cfg)),
            ),
            run_config=tune.RunConfig(name="tune", storage_path=sweep_uri, verbose=0,
                                      callbacks=[ReleaseTrialWorkers()]),
        )
        grid = tuner.fit()
        trials = [outcome_of(result, cfg, train.max_steps, settings.metric) for result in grid]
        best = best_trial(trials)
        best_cfg = with_values(cfg, best.values)
        header = (f"# best of {name}: trial {best.trial_id}, {settings.metric} {best.metric:.4f} at step {best.steps}\n"
                  f"# {', '.join(f'{k}={v}' for k, v in best.values.items())}\n")
        storage.write_text(out, header + yaml.safe_dump(best_cfg.model_dump(mode="json"), sort_keys=False))
        result = SweepResult(name, sweep_uri, settings.metric, trials, best, out, specs,
                             parent.run_id if parent is not None else None, tracker.uri or None)
        if parent is not None:
            # Observability after the fact: a tracking failure here must not lose a finished sweep.
            try:
                record_sweep(parent, result, TRIAL_TAG)
            except Exception as exc:
                log.warning("could not record the sweep's results in MLflow: %s", exc)
        ok = True
        return result
    finally:
        tracker.finish(parent, ok=ok)


def run_trial(values: dict[str, Any], context: dict[str, Any]) -> None:
    """One Tune trial: pretrain `context["base"]` with the sampled `values` on Ray Train workers, in a
    nested MLflow run of the sweep's parent run."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from llm.train.trainer import pretrain_loop_config, torch_trainer

    cfg = with_values(context["base"], values)
    trial_id = tune.get_context().get_trial_id()
    tracker: Tracker | None = context["tracker"]
    run = None
    if tracker is not None:
        typed = {path: field_value(cfg, path) for path in values}
        run = tracker.start_run(f"trial-{trial_id}", parent=context["parent_run_id"], tags={TRIAL_TAG: trial_id},
                                params={"sampled": typed, **redact(cfg.model_dump(mode="json"))})
    try:
        loop_config = pretrain_loop_config(cfg.model, cfg.train, context["tokens_uri"], run)
        loop_config["sweep_trial"] = True
        trainer = torch_trainer(loop_config, cfg.train, f"trial-{trial_id}", context["trials_uri"],
                                callbacks=[TuneReportCallback()])
        result = trainer.fit()
        if result.error is not None:  # V1 returns the error; V2 raises it from fit()
            raise result.error
    except BaseException:
        if tracker is not None:
            tracker.finish(run, ok=False)
        raise
    if tracker is not None:
        tracker.finish(run, ok=True)


class ReleaseTrialWorkers(tune.Callback):
    """Frees a finished trial's Ray Train worker group (its placement group, which the trial's workers
    name in their reports). Ray Train leaves that to a watcher that needs Ray's state API (the dashboard,
    which a local llmpipe Ray does not start), and a trial Tune stops early never frees it itself:
    without this, later trials would wait for CPUs forever."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        release_placement_group((trial.last_result or {}).get("placement_group_id"))

    on_trial_error = on_trial_complete


def release_placement_group(group_id: str | None) -> None:
    """Remove the placement group `group_id` (hex) unless it is gone already."""
    if not group_id:
        return
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    group = PlacementGroup(PlacementGroupID(bytes.fromhex(group_id)))
    if placement_group_table(group).get("state") not in (None, "REMOVED"):
        remove_placement_group(group)


def trials_that_fit(train: TrainConfig) -> int:
    """How many trials' worker groups (`num_workers` x `cpus_per_worker` CPUs, and a GPU each with
    `use_gpu`) the Ray cluster holds at once; at least one."""
    import ray

    resources = ray.cluster_resources()
    fits = resources.get("CPU", 1.0) // (train.num_workers * train.cpus_per_worker)
    if train.use_gpu:
        fits = min(fits, resources.get("GPU", 0.0) // train.num_workers)
    return max(1, int(fits))


def _seed(settings: SweepConfig, cfg: PipelineConfig) -> int:
    return cfg.train.seed if settings.seed is None else settings.seed


def _scheduler(settings: SweepConfig, grace: int, max_steps: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if settings.scheduler == "fifo":
        return FIFOScheduler()
    # Time is the training step the workers report (`step`), so rungs are in steps whatever the
    # evaluation interval, and a trial's last rung is its last step.
    return ASHAScheduler(time_attr="step", max_t=max_steps, grace_period=grace,
                         reduction_factor=settings.reduction_factor)
