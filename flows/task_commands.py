"""The downstream-task commands of `llmpipe`: `build-tasks`, `eval-tasks` and `lm-eval`.

    llmpipe build-tasks work/demo/tasks --qa ../shared/data/eval/quiz_bsdgames.jsonl \\
        --tokens work/demo/tokens --tokenizer work/demo/tokenizer
    llmpipe eval-tasks work/demo/train/runs/VERSION/final work/demo/tasks --limit 200
    llmpipe lm-eval --model llmpipe --model_args checkpoint=CKPT --tasks TASK --include_path TASKS

The work is in `llm.eval`; these only parse, open the MLflow run and print.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_WORK_DIR = "work"


def add_task_commands(sub, common: argparse.ArgumentParser) -> None:
    """Add the three subcommands to `llmpipe`'s subparsers."""
    what = "score a checkpoint on every task file (*.jsonl) of a folder: multiple choice and cloze"
    p = sub.add_parser("eval-tasks", help=what, description=what + "; writes results.json and results.txt and "
                       "logs them to MLflow", parents=[common])
    p.add_argument("checkpoint", help="a checkpoint folder (e.g. work/demo/train/runs/<version>/final)")
    p.add_argument("tasks_dir", help="folder of task files (`llmpipe build-tasks` makes some)")
    p.add_argument("--tokenizer", help="the tokenizer's model file (.model or .json) or the work directory's tokenizer/ folder "
                   "(default: the one the checkpoint's state.json records)")
    p.add_argument("--limit", type=int, help="score only the first N examples of each task")
    p.add_argument("--work-dir", help="work directory whose MLflow store is used (default: the one the checkpoint "
                   f"is under, else {DEFAULT_WORK_DIR}); MLFLOW_TRACKING_URI wins")
    p.add_argument("--out", help="folder for results.json and results.txt (default: <work-dir>/eval_tasks)")
    p.add_argument("--device", help="cuda, cpu, ... (default: a GPU when one is visible)")
    p.add_argument("--no-tracking", action="store_true", help="do not record an MLflow run")
    what = "write task files from question-answer files (multiple choice) and a token dataset's test split (last word)"
    p = sub.add_parser("build-tasks", help=what, description=what, parents=[common])
    p.add_argument("out_dir", help="folder to write the task files to")
    p.add_argument("--qa", action="append", default=[], metavar="FILE",
                   help="JSONL of open-answer questions (question, answer, answers, context = category); repeatable")
    p.add_argument("--choices", type=int, default=4, help="choices per multiple-choice question")
    p.add_argument("--seed", type=int, default=0, help="seed of the distractor draw")
    p.add_argument("--tokens", help="token dataset whose test split the last-word task is cut from")
    p.add_argument("--tokenizer", help="the tokenizer that made --tokens (model file or tokenizer/ folder; "
                   "default: <tokens>/../tokenizer)")
    p.add_argument("--max-pieces", type=int, default=3, help="last words of at most this many tokenizer pieces")
    p.add_argument("--limit", type=int, help="at most N last-word examples")
    what = "lm-evaluation-harness's command line with the `llmpipe` model registered (arguments as lm_eval's)"
    # Listed for `llmpipe --help` only: `main` hands what follows `lm-eval` to lm-eval unparsed.
    sub.add_parser("lm-eval", help=what, description=what, add_help=False)


def run_task_command(args: argparse.Namespace) -> int:
    """Run one of the three commands; returns the exit status."""
    if args.command == "build-tasks":
        return _build_tasks(args)
    if args.command == "lm-eval":
        from llm.eval.lm_eval_model import lm_eval_main

        return lm_eval_main(args.lm_eval_args)
    return _eval_tasks(args)


def work_dir_of(checkpoint: str) -> str | None:
    """The work directory a pipeline checkpoint lies under (`<work>/train/runs/<version>/...`,
    `<work>/finetune/runs/...`), None for a checkpoint elsewhere."""
    parts = checkpoint.rstrip("/").split("/")  # URIs too: s3://bucket/work/train/runs/...
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in ("train", "finetune") and parts[i + 1] == "runs":
            return "/".join(parts[:i]) or ("/" if checkpoint.startswith("/") else ".")
    return None


def _eval_tasks(args: argparse.Namespace) -> int:
    from llm.config import TrackingConfig
    from llm.eval.tasks import RESULTS_JSON, format_table, run_tasks
    from llm.tracking import Tracker

    work_dir = args.work_dir or work_dir_of(args.checkpoint) or DEFAULT_WORK_DIR
    from llm import storage

    out = args.out or storage.join(work_dir, "eval_tasks")
    tracker = Tracker(TrackingConfig(enabled=not args.no_tracking), work_dir)
    run = tracker.start_run("eval_tasks", tags={"llmpipe.stage": "eval_tasks"})
    try:
        results = run_tasks(args.checkpoint, args.tasks_dir, out, tokenizer=args.tokenizer, limit=args.limit,
                            run_target=run, device=args.device)
    except BaseException:
        tracker.finish(run, ok=False)
        raise
    tracker.finish(run, ok=True)
    print(format_table(results))
    print(f"\nwrote {storage.join(out, RESULTS_JSON)} and results.txt"
          + (f"; MLflow run {run.run_id} ({tracker.ui_command()})" if run else ""))
    return 0


def _build_tasks(args: argparse.Namespace) -> int:
    from llm.errors import UserError
    from llm.eval.task_builders import build_choice_task, build_last_word_task
    from llm.eval.tasks import checkpoint_tokenizer

    if not args.qa and not args.tokens:
        raise UserError("build-tasks: nothing to build; give --qa FILE (multiple choice) and/or --tokens DATASET "
                        "(last word)")
    for qa in args.qa:
        out = os.path.join(args.out_dir, f"{Path(qa).stem}_choice.jsonl")
        counts = build_choice_task(qa, out, num_choices=args.choices, seed=args.seed)
        print(f"{out}: {counts['written']} questions ({counts['skipped']} left out: too few other answers "
              "in their category)")
    if args.tokens:
        tokenizer = checkpoint_tokenizer({}, args.tokenizer or os.path.join(os.path.dirname(
            os.path.normpath(args.tokens)), "tokenizer"))
        out = os.path.join(args.out_dir, "last_word_test.jsonl")
        counts = build_last_word_task(args.tokens, tokenizer, out, max_pieces=args.max_pieces, limit=args.limit)
        print(f"{out}: {counts['written']} passages ({counts['skipped']} test documents without a fitting last word)")
    return 0
