"""The `llmpipe` command: `run` for the whole pipeline, one subcommand per stage, `config` to check.

    llmpipe run configs/demo.yaml train.max_steps=50
    llmpipe ingest configs/demo.yaml
    llmpipe config configs/seed-24x1024.yaml
    llmpipe explain work/demo/datasets/docs DOC_ID
    llmpipe stats work/demo/datasets/docs
    llmpipe lineage work/demo/tokens
    llmpipe gc work/demo            # dry run; --apply deletes
"""

from __future__ import annotations

import argparse
import os
import sys

STAGE_HELP = {
    "crawl": "crawl the configured site (default: a local pydoc server) into WARC files",
    "ingest": "read sources, extract, normalize, scrub PII, language ID, quality and content filters "
              "(one fused pass per shard)",
    "exact_dedup": "drop exact duplicates of the normalized text",
    "minhash_dedup": "drop near-duplicates (MinHash LSH, verified, no chaining) and repeated URLs",
    "shard": "cut the cleaned corpus into Parquet shards of the configured size",
    "tokenizer": "train the SentencePiece tokenizer on a sample of the shards",
    "tokenize": "encode shards into token files, split train/validation",
    "pretrain": "pre-train the transformer with Ray Train",
    "evaluate": "validation loss, perplexity and sample continuations of the final checkpoint",
}


def _quiet_environment() -> None:
    # No network here to send telemetry to; and keep Ray on loopback for local runs.
    for key, value in {
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        os.environ.setdefault(key, value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmpipe", description="Raw text to a trained, evaluated language model.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("config", nargs="?", help="YAML config file (default: built-in defaults)")
        p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")
        return p

    add("run", "run the whole pipeline")
    add("data", "refresh the data (crawl to token files): recrawl with conditional requests, read new input "
        "files, process only new shards")
    for name, help_text in STAGE_HELP.items():
        add(name, help_text)
    add("config", "validate a config and print it fully resolved")
    explain = sub.add_parser("explain", help="why a document was kept or dropped at each step",
                             description="why a document was kept or dropped at each step, with its signals")
    explain.add_argument("dataset", help="dataset folder or URI (e.g. work/demo/datasets/docs)")
    explain.add_argument("doc_id", help="the document's id")
    what = "drops per step and rule, documents per language, near-duplicate statistics"
    stats = sub.add_parser("stats", help=what, description=what)
    stats.add_argument("dataset", help="dataset folder or URI (e.g. work/demo/datasets/docs)")
    what = "a dataset's versions and the chain of versions, code, config and inputs that made it"
    lineage = sub.add_parser("lineage", help=what, description=what)
    lineage.add_argument("dataset", help="dataset folder or URI, optionally DATASET@VERSION")
    what = "remove dataset versions (and their files) that no current version depends on"
    gc = sub.add_parser("gc", help=what, description=what + "; a dry run unless --apply")
    gc.add_argument("work_dir", help="the work directory (local path or s3:// prefix)")
    gc.add_argument("--apply", action="store_true", help="delete (default: only list what would go)")
    return parser


def _split_config_arg(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    # `llmpipe run train.max_steps=5` has no config file: the first positional is an override.
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides
    return config, overrides


def main(argv: list[str] | None = None) -> int:
    _quiet_environment()
    args = _parser().parse_args(argv)
    from llm.config import ConfigError, load_config
    from llm.storage import StorageError
    from llm.workdir_lock import WorkDirBusy

    try:
        if args.command == "lineage":
            from llm.lineage_chain import format_lineage

            print(format_lineage(args.dataset))
            return 0
        if args.command == "gc":
            from llm.gc import format_gc, run_gc

            print(format_gc(run_gc(args.work_dir, apply=args.apply), args.apply))
            return 0
        if args.command in ("explain", "stats"):
            from llm.data import inspect

            if args.command == "explain":
                print(inspect.explain(args.dataset, args.doc_id))
            else:
                print(inspect.format_stats(inspect.stats(args.dataset)))
            return 0
        config_path, overrides = _split_config_arg(args)
        cfg = load_config(config_path, overrides)
        if args.command == "config":
            import yaml

            print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
            return 0
        from flows.pipeline import DATA_STAGES, STAGES, data_refresh, local_run_settings, pipeline, stages_flow
        from llm.layout import Layout
        from llm.summary import format_summary
        from llm.workdir_lock import WorkDirLock

        # Taken here as well as in the flow, so a busy work directory is one line before Prefect starts.
        work_dir = Layout.for_work_dir(cfg.work_dir).work_dir
        with WorkDirLock(work_dir, description=f"llmpipe {args.command} ({cfg.name})"), local_run_settings():
            if args.command == "run":
                result = pipeline(cfg)
            elif args.command == "data":
                result = data_refresh(cfg)
            else:
                assert args.command in STAGES or args.command in DATA_STAGES
                result = stages_flow(cfg, [args.command])
        print(format_summary(result))
        return 0
    except (ConfigError, StorageError, FileNotFoundError, WorkDirBusy) as exc:
        print(f"llmpipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmpipe: interrupted; rerun the same command to resume from the finished shards", file=sys.stderr)
        return 130
    finally:
        from llm.cluster import shutdown_ray

        shutdown_ray()


if __name__ == "__main__":
    sys.exit(main())
