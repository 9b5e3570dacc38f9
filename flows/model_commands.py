"""The model commands of `llmpipe` that are not stages: `rate` (blind side-by-side human rating of two
models) and `sweep` (hyperparameter search of pretraining on Ray Tune).

    llmpipe rate work/demo/train/runs/VERSION/final models:/llmpipe-gpt-sft@current --prompts prompts.jsonl
    llmpipe sweep configs/demo.yaml --param train.learning_rate=loguniform:1e-4:1e-2 --samples 8
"""

from __future__ import annotations

import argparse


def add_rate_command(sub, common: argparse.ArgumentParser) -> None:
    what = ("rate two models side by side, blind: generate both models' answers to the prompts, then serve a "
            "page on 127.0.0.1 where a person picks the better answer; ratings go to the work directory and MLflow")
    p = sub.add_parser("rate", help=what, description=what, parents=[common])
    for name in ("model_a", "model_b"):
        p.add_argument(name, metavar=name.upper(),
                       help="a checkpoint folder (pretraining or fine-tune) or models:/NAME/VERSION or models:/NAME@ALIAS")
    p.add_argument("--prompts", help="JSONL ({\"prompt\": ...} per line) or text (a prompt per line) file "
                   "(default: the config's eval.prompts)")
    p.add_argument("--config", help="YAML config for eval.prompts and decoding, tracking and work_dir (default: built-in)")
    p.add_argument("--work-dir", help="where the session folder goes, under rate/ (default: the config's work_dir)")
    p.add_argument("--port", type=int, default=8790, help="port on 127.0.0.1 (0: any free one)")
    p.add_argument("--max-new-tokens", type=int, help="tokens per answer (default: the config's eval.max_new_tokens)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling and of the A/B order")
    p.add_argument("--tokenizer", help="tokenizer .model file for both models (default: the one each checkpoint records)")
    p.add_argument("--summary", action="store_true",
                   help="print the session's counts, win rates and Bradley-Terry scores and log them, without serving")


def run_rate(args: argparse.Namespace) -> int:
    from llm.config import load_config
    from llm.errors import UserError
    from llm.eval.rating_server import run_rating

    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be 0 (any free port) to 65535")
    run_rating(args.model_a, args.model_b, load_config(args.config, []), prompts_file=args.prompts,
               work_dir=args.work_dir, port=args.port, max_new_tokens=args.max_new_tokens, seed=args.seed,
               tokenizer=args.tokenizer, summary_only=args.summary)
    return 0


def add_sweep_command(sub, common: argparse.ArgumentParser) -> None:
    what = ("hyperparameter sweep of pretraining on Ray Tune (one Ray Train run per trial, ASHA early "
            "stopping on validation loss); writes the best trial's full config as YAML")
    p = sub.add_parser("sweep", help=what, description=what, parents=[common])
    p.add_argument("config", nargs="?", help="YAML config file (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")
    p.add_argument("--param", action="append", default=[], required=True, metavar="FIELD=KIND:ARGS",
                   help="a swept field: uniform:LOW:HIGH, loguniform:LOW:HIGH, randint:LOW:HIGH (both ends "
                   "included) or choice:V1,V2,... (e.g. train.learning_rate=loguniform:1e-4:1e-2); repeatable")
    p.add_argument("--samples", type=int, default=4, help="trials: configs sampled from the space (default 4)")
    p.add_argument("--scheduler", choices=["asha", "fifo"], default="asha",
                   help="asha: stop trials that trail at each rung; fifo: run every trial to the end")
    p.add_argument("--metric", choices=["val_loss", "loss"], default="val_loss", help="compared on, lower is better")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as Ray's CPUs hold)")
    p.add_argument("--grace-period", type=int, help="ASHA: steps before a trial can be stopped (default: train.eval_every)")
    p.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA: rung spacing and cut (default 2)")
    p.add_argument("--seed", type=int, help="seed of the sampling (default: train.seed)")
    p.add_argument("--out", help="where to write the best config (default: WORK/sweeps/<sweep>/best.yaml)")


def run_sweep_command(cfg, args: argparse.Namespace) -> int:
    from llm.layout import Layout
    from llm.train.search_space import parse_space
    from llm.train.sweep import run_sweep, sweep_settings
    from llm.workdir_lock import WorkDirLock

    specs = parse_space(args.param, cfg)
    settings = sweep_settings(samples=args.samples, scheduler=args.scheduler, metric=args.metric,
                              max_concurrent=args.max_concurrent, grace_period=args.grace_period,
                              reduction_factor=args.reduction_factor, seed=args.seed)
    with WorkDirLock(Layout.for_work_dir(cfg.work_dir).work_dir, description=f"llmpipe sweep ({cfg.name})"):
        result = run_sweep(cfg, specs, settings, args.out)
    print(result.summary())
    return 0
