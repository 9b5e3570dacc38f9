"""Downstream tasks scored by log-likelihood: multiple choice (acc, acc_norm) and cloze (acc, target perplexity).

The metrics are lm-evaluation-harness's:

- multiple choice: `acc` is whether the choice with the highest log-likelihood (after the delimiter
  " ") is the gold one; `acc_norm` the same with each log-likelihood divided by the choice's length
  in characters (the choice text without the delimiter), so long choices are not penalised for
  their length. Ties go to the first choice, as numpy's argmax breaks them.
- cloze: `acc` is whether the target is the model's greedy continuation, token for token (LAMBADA's
  `acc`); `target_ppl` is exp(-mean over examples of the target's log-likelihood), LAMBADA's
  `perplexity`.

`run_tasks` scores every task file of a folder (`llm.eval.task_files`), writes `results.json` and
`results.txt` (the table) and logs them with a metric per task and measure to an MLflow run.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm import storage
from llm.errors import UserError
from llm.eval.loglikelihood import LogLikelihoodScorer
from llm.train.checkpoint import checkpoint_tokenizer  # noqa: F401  (also the commands' resolver)
from llm.eval.task_files import CLOZE, TARGET_DELIMITER, ChoiceExample, ClozeExample, TaskData, read_task, task_files

RESULTS_JSON, RESULTS_TABLE = "results.json", "results.txt"
log = logging.getLogger(__name__)


@dataclass
class TaskResult:
    """One task's scores: `acc` for both kinds; `acc_norm` for multiple choice, `target_ppl` for cloze."""

    task: str
    kind: str
    shape: str
    n: int
    acc: float
    acc_norm: float | None = None
    target_ppl: float | None = None
    chance: float | None = None  # multiple choice: the mean of 1 / number of choices


def score_choices(scorer: LogLikelihoodScorer, examples: list[ChoiceExample]) -> dict[str, float]:
    """acc, acc_norm and chance of multiple-choice examples."""
    pairs = [(ex.context, TARGET_DELIMITER + choice) for ex in examples for choice in ex.choices]
    scores = iter(scorer.score_pairs(pairs))
    hits, norm_hits = [], []
    for ex in examples:
        lls = np.array([next(scores).loglikelihood for _ in ex.choices])
        lengths = np.array([float(len(choice)) for choice in ex.choices])
        hits.append(int(np.argmax(lls)) == ex.gold)
        norm_hits.append(int(np.argmax(lls / lengths)) == ex.gold)
    return {"acc": float(np.mean(hits)), "acc_norm": float(np.mean(norm_hits)),
            "chance": float(np.mean([1 / len(ex.choices) for ex in examples]))}


def score_cloze(scorer: LogLikelihoodScorer, examples: list[ClozeExample]) -> dict[str, float]:
    """acc (target is the greedy continuation) and target_ppl of cloze examples."""
    scores = scorer.score_pairs([(ex.context, ex.target) for ex in examples])
    mean_ll = float(np.mean([s.loglikelihood for s in scores]))
    return {"acc": float(np.mean([s.is_greedy for s in scores])), "target_ppl": math.exp(-mean_ll)}


def score_task(scorer: LogLikelihoodScorer, task: TaskData) -> TaskResult:
    """The scores of one read task."""
    measured = score_cloze(scorer, task.examples) if task.kind == CLOZE else score_choices(scorer, task.examples)
    return TaskResult(task=task.name, kind=task.kind, shape=task.shape, n=len(task.examples), **measured)


def format_table(results: list[TaskResult]) -> str:
    """The results as a plain-text table: task, kind, n, acc, acc_norm / target ppl."""
    rows = [("task", "kind", "n", "acc", "acc_norm / target ppl", "chance")]
    for r in results:
        second = f"{r.target_ppl:.2f} ppl" if r.kind == CLOZE else f"{r.acc_norm:.4f}"
        rows.append((r.task, r.kind, str(r.n), f"{r.acc:.4f}", second, f"{r.chance:.4f}" if r.chance else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def task_metrics(results: list[TaskResult]) -> dict[str, float]:
    """MLflow metrics, `<task>.acc`, `<task>.acc_norm`, `<task>.target_ppl`, `<task>.n`."""
    metrics: dict[str, float] = {}
    for r in results:
        for key in ("n", "acc", "acc_norm", "target_ppl"):
            value = getattr(r, key)
            if value is not None:
                metrics[f"{r.task}.{key}"] = float(value)
    return metrics


def load_scorer(checkpoint: str, tokenizer: str | None = None, device: str | None = None,
                batch_size: int = 16) -> tuple[LogLikelihoodScorer, dict[str, Any], str]:
    """(scorer, the checkpoint's state, the tokenizer URI used) for a checkpoint folder."""
    import torch

    from llm.train.checkpoint import load_checkpoint_tokenizer, load_model

    model, state = load_model(checkpoint, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    tok, tokenizer_uri = load_checkpoint_tokenizer(state, tokenizer, checkpoint)
    if tok.vocab_size != model.cfg.vocab_size:
        raise UserError(f"tokenizer {tokenizer_uri} has {tok.vocab_size} pieces but the checkpoint's model "
                        f"{model.cfg.vocab_size}: pass the tokenizer the model was trained with")
    return LogLikelihoodScorer(model, tok, batch_size), state, tokenizer_uri


def run_tasks(checkpoint: str, tasks_dir: str, out_dir: str, tokenizer: str | None = None,
              limit: int | None = None, run_target=None, device: str | None = None) -> list[TaskResult]:
    """Score every task file of `tasks_dir`, write `results.json` and `results.txt` to `out_dir` (local
    or s3://), and
    with `run_target` (an MLflow run) log the metrics (`task_metrics`) and both files."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    files = task_files(tasks_dir)
    tasks = [read_task(path, limit) for path in files]  # every file read (and checked) before scoring
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise UserError(f"{tasks_dir}: two task files have the same task name ({sorted(names)})")
    scorer, state, tokenizer_uri = load_scorer(checkpoint, tokenizer, device)
    results = []
    for task in tasks:
        started = time.time()
        results.append(score_task(scorer, task))
        log.info("%s: %d examples scored in %.1f s", task.name, len(task.examples), time.time() - started)
    table = format_table(results)
    record = {"checkpoint": checkpoint, "step": state.get("step"), "tokenizer": tokenizer_uri,
              "tasks_dir": str(tasks_dir), "limit": limit, "results": [asdict(r) for r in results]}
    text = json.dumps(record, indent=2)
    storage.write_text(storage.join(out_dir, RESULTS_JSON), text)
    storage.write_text(storage.join(out_dir, RESULTS_TABLE), table + "\n")
    if run_target is not None:
        client = run_target.client()
        for key, value in {"checkpoint": checkpoint, "tokenizer": tokenizer_uri, "tasks_dir": str(tasks_dir),
                           "limit": str(limit)}.items():
            client.log_param(run_target.run_id, key, value)
        run_target.log_metrics(task_metrics(results), step=int(state.get("step") or 0))
        with tempfile.TemporaryDirectory(prefix="llmpipe-eval-tasks-") as folder:
            for name, content in ((RESULTS_JSON, text), (RESULTS_TABLE, table + "\n")):
                Path(folder, name).write_text(content, encoding="utf-8")
                run_target.log_artifact(str(Path(folder, name)))
    return results

