"""What a finished sweep leaves in MLflow: each trial run's outcome, and the best trial and the results
on the sweep's parent run."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

from llm import storage
from llm.tracking import RunTarget

if TYPE_CHECKING:
    from llm.train.sweep import SweepResult

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
        if run.info.status == "RUNNING":  # stopped from outside: the trial never closed its run
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
