"""A finished sweep's trials: their outcomes, the best one, the results table, and what MLflow keeps of
them (each trial run's outcome; the best trial and the results on the sweep's parent run)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm import storage
from llm.config import PipelineConfig
from llm.errors import UserError
from llm.tracking import RunTarget
from llm.train.search_space import ParamSpec, field_value, with_values

if TYPE_CHECKING:
    from llm.train.sweep import SweepResult


@dataclass
class TrialOutcome:
    """One trial: its sampled `values`, how far it trained and the metric it ended on."""

    trial_id: str
    values: dict[str, Any]
    steps: int
    metric: float | None
    #: `completed` (trained to the end, or to the loop's own early stop), `stopped early` (by the
    #: scheduler) or `failed`.
    outcome: str
    error: str | None = None
    run_id: str | None = None


def outcome_of(result, cfg: PipelineConfig, max_steps: int, metric: str) -> TrialOutcome:
    """A Tune `Result` as a `TrialOutcome`; its values typed as the config holds them."""
    metrics = result.metrics or {}
    values = dict(result.config or {})
    typed = with_values(cfg, values)
    values = {path: field_value(typed, path) for path in values}
    frame = result.metrics_dataframe
    steps = int(frame["step"].max()) if frame is not None and "step" in frame else 0
    value = metrics.get(metric)
    if result.error is not None:
        outcome = "failed"
    elif steps >= max_steps or metrics.get("early_stopped"):
        outcome = "completed"
    else:
        outcome = "stopped early"
    error = None
    if result.error is not None:
        from llm.errors import user_cause

        cause = user_cause(result.error) or result.error
        error = " ".join(str(cause).split())[:300]
    trial_id = metrics.get("trial_id") or os.path.basename(result.path.rstrip("/"))
    return TrialOutcome(str(trial_id), values, steps, None if value is None else float(value), outcome, error)


def best_trial(trials: list[TrialOutcome]) -> TrialOutcome:
    """The trial with the lowest metric among those that trained to the end (a trial stopped early was
    judged on fewer steps); among all that reported, when none did. An error when none reported."""
    for pool in ([t for t in trials if t.outcome == "completed"], [t for t in trials if t.outcome != "failed"]):
        pool = [t for t in pool if t.metric is not None]
        if pool:
            return min(pool, key=lambda t: t.metric)
    errors = sorted({t.error for t in trials if t.error})
    raise UserError("every trial of the sweep failed: " + ("; ".join(errors) or "no trial reported a metric"))


def results_table(trials: list[TrialOutcome], specs: list[ParamSpec], metric: str) -> str:
    """Trials as aligned text columns: id, the swept fields, steps, the metric, outcome; best first."""
    ranked = sorted(trials, key=lambda t: (t.outcome == "failed", t.outcome != "completed",
                                           t.metric if t.metric is not None else float("inf")))
    header = ["trial", *(spec.path for spec in specs), "steps", metric, "outcome"]
    rows = [[t.trial_id, *(shown_value(t.values.get(spec.path)) for spec in specs), str(t.steps),
             "-" if t.metric is None else f"{t.metric:.4f}", t.outcome + (f": {t.error}" if t.error else "")]
            for t in ranked]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]).rstrip()
                     for row in [header, *rows])


def shown_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


#: MLflow status of a trial run by its outcome: a trial the scheduler stopped was ended from outside.
_STATUS = {"completed": "FINISHED", "stopped early": "KILLED", "failed": "FAILED"}


def record_sweep(parent: RunTarget, result: "SweepResult", trial_tag: str) -> None:
    """Tag every trial run (nested under `parent`, found by its `trial_tag`) with its outcome and close
    the ones the scheduler stopped; log the best trial, the results table and the best config to `parent`."""
    client = parent.client()
    experiment = client.get_run(parent.run_id).info.experiment_id
    runs = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'",
                              max_results=10_000)
    by_trial = {run.data.tags.get(trial_tag): run for run in runs}
    for trial in result.trials:
        run = by_trial.get(trial.trial_id)
        if run is None:
            continue
        trial.run_id = run.info.run_id
        client.set_tag(run.info.run_id, "llmpipe.sweep.outcome", trial.outcome)
        client.log_metric(run.info.run_id, "sweep_steps", trial.steps)
        # The sweep's outcome is what holds: a trial the scheduler stopped either never closed its run or
        # closed it as failed when the stop interrupted it (which of the two depends on timing).
        if run.info.status != _STATUS[trial.outcome]:
            client.set_terminated(run.info.run_id, _STATUS[trial.outcome])

    best = result.best
    client.set_tag(parent.run_id, "llmpipe.sweep.best_trial", best.trial_id)
    if best.run_id:
        client.set_tag(parent.run_id, "llmpipe.sweep.best_run_id", best.run_id)
    client.log_param(parent.run_id, "best_config_uri", result.best_config_uri)
    for path, value in best.values.items():
        client.log_param(parent.run_id, f"best.{path}", value)
    metrics = {f"best_{result.metric}": best.metric, "trials": len(result.trials),
               "trials_stopped_early": sum(t.outcome == "stopped early" for t in result.trials),
               "trials_failed": sum(t.outcome == "failed" for t in result.trials)}
    parent.log_metrics(metrics, step=0)
    client.log_table(parent.run_id, data=_table_data(result), artifact_file="sweep/results.json")
    client.log_text(parent.run_id, result.table(), "sweep/results.txt")
    with tempfile.TemporaryDirectory(prefix="llmpipe-sweep-") as folder:
        local = os.path.join(folder, "best.yaml")
        with open(local, "w", encoding="utf-8") as f:
            f.write(storage.read_text(result.best_config_uri))
        parent.log_artifact(local, "sweep")


def _table_data(result: "SweepResult") -> dict[str, list]:
    """The results as columns (MLflow's table artifact): one row per trial."""
    columns: dict[str, list] = {"trial": [], "run_id": [], "steps": [], result.metric: [], "outcome": []}
    for spec in result.specs:
        columns[spec.path] = []
    for trial in result.trials:
        columns["trial"].append(trial.trial_id)
        columns["run_id"].append(trial.run_id or "")
        columns["steps"].append(trial.steps)
        columns[result.metric].append(trial.metric)
        columns["outcome"].append(trial.outcome)
        for spec in result.specs:
            columns[spec.path].append(trial.values.get(spec.path))
    return columns
