"""With `report_evals` (a sweep trial) the loop reports every evaluation, not only its checkpoints, so a
Tune scheduler can judge a run at each validation loss; plain training reports checkpoints only."""

from __future__ import annotations

from llm.train.loop import run_workload
from llm.train.workload import TokenWorkload
from tests.unit.train.tiny import tiny_model, tiny_train


def _reports(tokens_uri: str, report_evals: bool) -> list[tuple[int, float, bool]]:
    cfg = tiny_train(max_steps=6, eval_every=2, checkpoint_every=4, log_every=2, eval_batches=2, system_metrics=False)
    seen: list[tuple[int, float, bool]] = []

    def record(metrics: dict, directory: str | None) -> None:
        seen.append((metrics["step"], metrics["val_loss"], directory is not None))

    summary = run_workload(TokenWorkload(tiny_model(), cfg, tokens_uri), cfg, report=record, report_evals=report_evals)
    assert summary.steps == 6
    return seen


def test_every_evaluation_is_reported_once_with_checkpoints_carrying_theirs(tokens_uri):
    reports = _reports(tokens_uri, report_evals=True)
    # Evaluations at 2, 4, 6; checkpoints at 4 and 6 report their evaluation themselves.
    assert [(step, folder) for step, _, folder in reports] == [(2, False), (4, True), (6, True)]
    assert reports[-1][1] < reports[0][1]  # the validation loss each report carries is that step's


def test_plain_training_reports_only_checkpoints(tokens_uri):
    assert [(step, folder) for step, _, folder in _reports(tokens_uri, report_evals=False)] == [(4, True), (6, True)]
