"""A sweep on local Ray Tune over Ray Train trials: ASHA stops a trial early, every trial is a nested MLflow
run of the sweep's run, and the best config is a YAML file `llmpipe pretrain` loads."""

from __future__ import annotations

import json

import pytest
import yaml

from llm.config import build_config, load_config
from llm.layout import Layout
from llm.train.data import write_token_dataset
from llm.train.search_space import parse_space
from llm.train.sweep import SweepConfig, run_sweep, trials_that_fit
from tests.unit.train.tiny import VOCAB, counting_docs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GOOD, BAD = 1e-2, 1e-5  # 1e-5 barely moves the loss in 10 steps; 1e-2 more than halves it


def test_asha_sweep_stops_a_bad_trial_and_writes_the_best_config(ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    work = tmp_path / "work"
    write_token_dataset(Layout.for_work_dir(str(work)).tokens,
                        {"train": counting_docs(200, 0), "val": counting_docs(40, 1)}, vocab_size=VOCAB)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = build_config({
        "name": "tiny", "work_dir": str(work), "tracking": {"uri": tracking, "experiment": "sweep-test"},
        "model": {"layers": 2, "hidden_size": 32, "attention_heads": 2, "context_length": 32},
        "train": {"num_workers": 1, "cpus_per_worker": 1, "batch_size": 8, "micro_batch_size": 8, "warmup_steps": 2,
                  "max_steps": 10, "eval_every": 5, "eval_batches": 2, "checkpoint_every": 10, "log_every": 5,
                  "seed": 3, "system_metrics": False},
    })
    assert trials_that_fit(cfg.train) == 2  # 2 CPUs, one 1-CPU worker a trial
    specs = parse_space([f"train.learning_rate=choice:{BAD},{GOOD}"], cfg)
    # One trial at a time, so each trial meets ASHA's rung with every earlier trial's result recorded:
    # a bad trial after a good one is stopped at its first evaluation, whatever the machine's speed.
    result = run_sweep(cfg, specs, SweepConfig(samples=3, max_concurrent=1, grace_period=1, seed=3))

    trials = sorted(result.trials, key=lambda t: t.trial_id)
    drawn = [t.values["train.learning_rate"] for t in trials]
    assert drawn[:2] == [GOOD, BAD], f"seed 3 no longer draws a good trial first: {drawn}"
    assert [t.outcome for t in trials[:2]] == ["completed", "stopped early"]
    assert trials[0].steps == 10 and trials[1].steps == 5
    for trial in trials[2:]:  # a later trial: good ones complete, bad ones are stopped as well
        assert trial.outcome == ("completed" if trial.values["train.learning_rate"] == GOOD else "stopped early")
    assert result.best.values == {"train.learning_rate": GOOD}
    assert result.best.metric < 0.8 * trials[1].metric

    # Every trial's Ray Train workers were freed, stopped ones included.
    assert ray_local.available_resources().get("CPU") == ray_local.cluster_resources()["CPU"]

    # The best config is the full resolved config with the best trial's values: it loads as a config.
    best = load_config(result.best_config_uri)
    assert best.train.learning_rate == GOOD
    assert best.model_dump(exclude={"train": {"learning_rate"}}) == cfg.model_dump(exclude={"train": {"learning_rate"}})

    client = MlflowClient(tracking_uri=tracking)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["sweep.space.train.learning_rate"] == f"choice:{BAD},{GOOD}"
    assert parent.data.params["sweep.scheduler"] == "asha"
    assert parent.data.tags["llmpipe.sweep.best_trial"] == result.best.trial_id
    assert parent.data.metrics["trials_stopped_early"] >= 1
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {"sweep/results.json", "sweep/results.txt", "sweep/best.yaml"}
    with open(client.download_artifacts(parent.info.run_id, "sweep/results.json", str(tmp_path))) as f:
        table = json.load(f)  # MLflow's table artifact: columns and rows
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert sorted((r["trial"], r["outcome"]) for r in rows) == [(t.trial_id, t.outcome) for t in trials]

    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_trial = {run.data.tags["llmpipe.sweep.trial_id"]: run for run in runs}
    assert sorted(by_trial) == [t.trial_id for t in trials]
    for trial in trials:
        run = by_trial[trial.trial_id]
        assert float(run.data.params["sampled.train.learning_rate"]) == trial.values["train.learning_rate"]
        assert float(run.data.params["train.learning_rate"]) == trial.values["train.learning_rate"]
        assert run.data.params["model.hidden_size"] == "32" and run.data.params["work_dir"] == str(work)
        assert run.data.tags["llmpipe.sweep.outcome"] == trial.outcome
        assert run.info.status == ("FINISHED" if trial.outcome == "completed" else "KILLED")
        val = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        # A stopped trial may log a step or two more before Tune's stop reaches its workers.
        assert val == [0, 5, 10] if trial.outcome == "completed" else val[:2] == [0, 5]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")][:1] == [5]

    printed = result.summary()
    assert f"best config: {result.best_config_uri}" in printed and "stopped early" in printed
    assert yaml.safe_load(open(result.best_config_uri))["train"]["learning_rate"] == GOOD
