"""The `llmpipe` command: `run` for the whole pipeline, one subcommand per stage, `config` to check.

    llmpipe run configs/demo.yaml train.max_steps=50
    llmpipe ingest configs/demo.yaml
    llmpipe finetune configs/demo.yaml finetune.method=prefix
    llmpipe config configs/seed-24x1024.yaml
    llmpipe explain work/demo/datasets/docs DOC_ID
    llmpipe stats work/demo/datasets/docs
    llmpipe lineage work/demo/tokens
    llmpipe tokenizer-card work/demo/tokenizer
    llmpipe gc work/demo            # dry run; --apply deletes
    llmpipe export work/demo/finetune/runs/VERSION/final exported/ --format merged
    llmpipe export work/demo/train/runs/VERSION/final hf/ --format hf    # a transformers GPT-2 folder
    llmpipe export-tokens work/demo/tokens exported/ --format datatrove   # or megatron
    llmpipe build-tasks work/demo/tasks --qa ../shared/data/eval/quiz_bsdgames.jsonl --tokens work/demo/tokens
    llmpipe eval-tasks work/demo/train/runs/VERSION/final work/demo/tasks --limit 200
    llmpipe lm-eval --model llmpipe --model_args checkpoint=CKPT,tokenizer=TOK --tasks hellaswag
    llmpipe sweep configs/demo.yaml --param train.learning_rate=loguniform:1e-4:1e-2 --samples 8
    llmpipe serve                   # Prefect server + worker + MLflow server on 127.0.0.1; `llmpipe stop`
    llmpipe rate work/demo/train/runs/VERSION/final models:/llmpipe-gpt-sft@current --prompts prompts.jsonl

An error the user can fix (a config field, an input path, credentials, a server address) is one line
on stderr and exit status 2; `--debug` (or LLMPIPE_DEBUG=1) adds its traceback. Anything else is a bug:
its traceback and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import traceback
from contextlib import contextmanager
from typing import Iterator

STAGE_HELP = {
    "crawl": "crawl the configured site (default: a local pydoc server) into WARC files",
    "ingest": "read sources, extract, normalize, scrub PII, language ID, quality and content filters "
              "(one fused pass per shard)",
    "exact_dedup": "drop exact duplicates of the normalized text",
    "minhash_dedup": "drop near-duplicates (MinHash LSH, verified, no chaining) and repeated URLs",
    "shard": "cut the cleaned corpus into Parquet shards of the configured size",
    "tokenizer": "train the SentencePiece tokenizer on a sample of the shards",
    "tokenize": "encode shards into token files, split train/validation/test",
    "pretrain": "pre-train the transformer with Ray Train",
    "evaluate": "test-split loss, perplexity and sample continuations of the final checkpoint",
    "finetune": "fine-tune the pretrained model on SFT pairs or chats (full, LoRA, prefix tuning, adapters)",
}


def _quiet_environment() -> None:
    # No network here to send telemetry to. (Ray's loopback-only setting is `llm.cluster`'s: it holds
    # for a local Ray only.)
    for key, value in {
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
        "TOKENIZERS_PARALLELISM": "false",
        # The project's own log lines (data counts, a model registered, a publishing failure) go where
        # Prefect's go: the console and the flow run's logs on a server.
        "PREFECT_LOGGING_EXTRA_LOGGERS": "llm",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    }.items():
        os.environ.setdefault(key, value)
    llm_log = logging.getLogger("llm")
    if llm_log.level == logging.NOTSET:
        llm_log.setLevel(logging.INFO)


DEBUG_HELP = "show the traceback of every error (also LLMPIPE_DEBUG=1)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmpipe", description="Raw text to a trained, evaluated language model.")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    # Also accepted after the subcommand; SUPPRESS keeps a subcommand without it from resetting the
    # global flag.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        p.add_argument("config", nargs="?", help="YAML config file (default: built-in defaults)")
        p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")
        return p

    add("run", "run the whole pipeline")
    add("data", "refresh the data (crawl to token files): recrawl with conditional requests, read new input "
        "files, process only new shards")
    for name, help_text in STAGE_HELP.items():
        add(name, help_text)
    add("config", "validate a config and print it fully resolved")
    explain = sub.add_parser("explain", help="why a document was kept or dropped at each step", parents=[common],
                             description="why a document was kept or dropped at each step, with its signals")
    explain.add_argument("dataset", help="dataset folder or URI (e.g. work/demo/datasets/docs)")
    explain.add_argument("doc_id", help="the document's id")
    what = "drops per step and rule, documents per language, near-duplicate statistics"
    stats = sub.add_parser("stats", help=what, description=what, parents=[common])
    stats.add_argument("dataset", help="dataset folder or URI (e.g. work/demo/datasets/docs)")
    what = "a dataset's versions and the chain of versions, code, config and inputs that made it"
    lineage = sub.add_parser("lineage", help=what, description=what, parents=[common])
    lineage.add_argument("dataset", help="dataset folder or URI, optionally DATASET@VERSION")
    what = ("write a checkpoint as one plain model (LoRA merged), as base + adapter, or as a Hugging Face "
            "transformers folder (GPT-2, or a PEFT LoRA adapter)")
    export = sub.add_parser("export", help=what, description=what, parents=[common])
    export.add_argument("checkpoint", help="a checkpoint folder (e.g. .../finetune/runs/<version>/final)")
    export.add_argument("out", help="folder to write (local path or s3://)")
    export.add_argument("--format", choices=["merged", "adapter", "hf", "peft"], default="merged",
                        help="merged: model.pt a plain GPT loads (LoRA, full); adapter: adapter.pt naming its base; "
                        "hf: a GPT2LMHeadModel folder with its tokenizer (LoRA merged); peft: a LoRA checkpoint as "
                        "a PEFT adapter folder, its base as an hf folder in OUT/base")
    export.add_argument("--tokenizer", help="hf/peft: the tokenizer model file (.model or .json), for checkpoints whose "
                        "state.json records none, or to override it")
    what = ("a tokenizer's card: bytes per token, unknown and byte-fallback rates and round trip per language "
            "and source on held-out text (computed from its input shards for a version made without one)")
    card = sub.add_parser("tokenizer-card", help=what, description=what, parents=[common])
    card.add_argument("tokenizer", help="tokenizer dataset folder or URI, optionally DIR@VERSION")
    what = "remove dataset versions (and their files) that no current version depends on"
    gc = sub.add_parser("gc", help=what, description=what + "; a dry run unless --apply", parents=[common])
    gc.add_argument("work_dir", help="the work directory (local path or s3:// prefix)")
    gc.add_argument("--apply", action="store_true", help="delete (default: only list what would go)")
    from flows.model_commands import add_rate_command, add_sweep_command

    add_sweep_command(sub, common)
    _add_serve_commands(sub, common)
    add_rate_command(sub, common)
    from flows.task_commands import add_task_commands

    add_task_commands(sub, common)
    from flows.token_commands import add_export_tokens_command

    add_export_tokens_command(sub, common)
    return parser






def _add_serve_commands(sub, common: argparse.ArgumentParser) -> None:
    from flows import serve

    home_help = f"folder for the state file, databases and logs (default: {serve.DEFAULT_HOME})"
    what = ("start a Prefect server, a worker on its work pool and an MLflow server on 127.0.0.1, register "
            "prefect.yaml's deployments, and print the addresses; reuses a running one")
    p = sub.add_parser("serve", help=what, description=what, parents=[common])
    p.add_argument("--home", help=home_help)
    p.add_argument("--prefect-port", type=int, default=serve.DEFAULT_PREFECT_PORT, help="Prefect server and UI port")
    p.add_argument("--mlflow-port", type=int, default=serve.DEFAULT_MLFLOW_PORT, help="MLflow server and UI port")
    p.add_argument("--pool", default=serve.DEFAULT_POOL, help="the process work pool the worker polls")
    p.add_argument("--backend-store-uri", help="MLflow's run store, e.g. postgresql://... (default: "
                   "$MLFLOW_BACKEND_STORE_URI, else SQLite in the home)")
    p.add_argument("--artifacts-destination", help="MLflow's artifact store, e.g. s3://bucket/mlflow (default: "
                   "$MLFLOW_ARTIFACTS_DESTINATION, else a folder in the home)")
    p.add_argument("--stop", action="store_true", help="stop what a serve started instead (same as `llmpipe stop`)")
    what = "stop the processes `llmpipe serve` started, by the PIDs it recorded"
    p = sub.add_parser("stop", help=what, description=what, parents=[common])
    p.add_argument("--home", help=home_help)


def _split_config_arg(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    # `llmpipe run train.max_steps=5` has no config file: the first positional is an override.
    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides
    return config, overrides


def main(argv: list[str] | None = None) -> int:
    """Run one `llmpipe` command; returns the exit status (0, 1 for a bug, 2 for a user error, 130)."""
    _quiet_environment()
    argv = list(sys.argv[1:] if argv is None else argv)
    lead = next((i for i, a in enumerate(argv) if a != "--debug"), len(argv))
    if argv[lead:lead + 1] == ["lm-eval"]:
        # Everything after it is lm-eval's: argparse would take its flags for llmpipe's own.
        args = argparse.Namespace(command="lm-eval", debug=lead > 0, lm_eval_args=argv[lead + 1:])
    else:
        args = _parser().parse_args(argv)
    debug = args.debug or os.environ.get("LLMPIPE_DEBUG", "").lower() in ("1", "true", "yes")
    try:
        return _command(args, debug)
    except KeyboardInterrupt:
        if args.command == "serve":
            print("llmpipe: interrupted; serve stopped what it had started", file=sys.stderr)
        elif args.command == "stop":
            print("llmpipe: interrupted; rerun `llmpipe stop` to finish", file=sys.stderr)
        elif args.command == "rate":
            print("llmpipe: interrupted; rerun the same command to continue (answers generated so far are kept)",
                  file=sys.stderr)
        else:
            print("llmpipe: interrupted; rerun the same command to resume from the finished shards", file=sys.stderr)
        return 130
    except Exception as exc:
        return _report(exc, debug)
    finally:
        from llm.cluster import shutdown_ray

        shutdown_ray()


def _command(args: argparse.Namespace, debug: bool) -> int:
    from llm.config import load_config

    if args.command == "stop" or (args.command == "serve" and args.stop):
        from flows.serve import stop

        stop(args.home)
        return 0
    if args.command == "serve":
        from flows.serve import serve

        serve(args.home, prefect_port=args.prefect_port, mlflow_port=args.mlflow_port, pool=args.pool,
              backend_store_uri=args.backend_store_uri, artifacts_destination=args.artifacts_destination)
        return 0
    if args.command == "rate":
        from flows.model_commands import run_rate

        return run_rate(args)
    if args.command == "lineage":
        from llm.lineage_chain import format_lineage

        print(format_lineage(args.dataset))
        return 0
    if args.command == "tokenizer-card":
        from llm.tokenizer.card_render import card_markdown
        from llm.tokenizer.card_version import version_card

        print(card_markdown(version_card(args.tokenizer)), end="")
        return 0
    if args.command == "gc":
        from llm.gc import format_gc, run_gc

        print(format_gc(run_gc(args.work_dir, apply=args.apply), args.apply))
        return 0
    if args.command == "export":
        if args.format in ("hf", "peft"):
            from llm.export.hf import export_hf

            written = export_hf(args.checkpoint, args.out, args.format, args.tokenizer)
        else:
            from llm.errors import UserError
            from llm.finetune.export import export

            if args.tokenizer:
                raise UserError(f"export --tokenizer applies to --format hf or peft, not {args.format}")
            written = export(args.checkpoint, args.out, args.format)
        print(f"wrote {', '.join(written['files'])} to {args.out} ({written['format']})")
        return 0
    if args.command == "export-tokens":
        from flows.token_commands import run_export_tokens

        return run_export_tokens(args)
    if args.command in ("eval-tasks", "build-tasks", "lm-eval"):
        from flows.task_commands import run_task_command

        return run_task_command(args)
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
    if args.command == "sweep":
        from flows.model_commands import run_sweep_command

        return run_sweep_command(cfg, args)
    from flows.pipeline import DATA_STAGES, STAGES, data_refresh, local_run_settings, pipeline, stages_flow
    from llm.layout import Layout
    from llm.summary import format_summary
    from llm.workdir_lock import WorkDirLock

    # Taken here as well as in the flow, so a busy work directory is one line before Prefect starts.
    work_dir = Layout.for_work_dir(cfg.work_dir).work_dir
    with WorkDirLock(work_dir, description=f"llmpipe {args.command} ({cfg.name})"), local_run_settings(), \
            _console_without_user_errors(enabled=not debug):
        if args.command == "run":
            result = pipeline(cfg)
        elif args.command == "data":
            result = data_refresh(cfg)
        else:
            assert args.command in STAGES or args.command in DATA_STAGES
            result = stages_flow(cfg, [args.command])
    print(format_summary(result))
    return 0






def _report(exc: Exception, debug: bool) -> int:
    """Print an error and return the exit status: a user-caused one as one line (2), with its
    traceback before it under `--debug`; anything else with its traceback (1)."""
    from llm.errors import user_cause

    cause = user_cause(exc) or _prefect_unreachable(exc)
    if cause is None or debug:
        traceback.print_exception(exc)
    if cause is None:
        return 1
    print(f"llmpipe: error: {one_line(cause)}", file=sys.stderr)
    return 2


def one_line(exc: BaseException) -> str:
    """An error's message on one line: continuation lines (one per field of a config with several
    problems, the layout of a YAML error) joined with "; "."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    head, rest = lines[0], lines[1:]
    if not rest:
        return head
    return head + (" " if head.endswith(":") else "; ") + "; ".join(rest)


def _prefect_unreachable(exc: BaseException) -> Exception | None:
    """A `UserError` naming PREFECT_API_URL when `exc` is Prefect failing to connect to its API
    server; None for any other error (and when Prefect was never loaded)."""
    if "prefect" not in sys.modules:
        return None
    import httpx
    from prefect.settings import PREFECT_API_URL

    from llm.errors import UserError, without_password

    url = PREFECT_API_URL.value()
    reason = None
    err: BaseException | None = exc
    while err is not None:
        if isinstance(err, httpx.TransportError):
            reason = reason or " ".join(str(err).split()) or type(err).__name__
        if reason and isinstance(err, OSError) and err.strerror:
            reason = err.strerror.lower()
        err = err.__cause__ or err.__context__
    if reason is None or not url:
        return None
    return UserError(f"PREFECT_API_URL {without_password(url)}: cannot reach the Prefect server ({reason}); start it "
                     "(`prefect server start`), or unset PREFECT_API_URL to run on a temporary local API")


class _UserErrorRecords(logging.Filter):
    """Drops the console records of a failure that `llmpipe` reports itself, as one line: the engine's
    "failed with exception" records, which carry the traceback, and the "Finished in state Failed"
    records that repeat the message. Records of other errors pass."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        from llm.errors import user_cause

        exc = record.exc_info[1] if record.exc_info else None
        cause = user_cause(exc) if exc is not None else None
        if cause is not None:
            self.messages.append(str(cause))
            return False
        text = record.getMessage()
        # A task whose retry condition declines a retry logs no traceback record first: only its
        # failed state, "... encountered an exception UserError: <message>".
        failed = _FAILED_WITH.search(text)
        if failed and failed.group(1) in _user_error_names():
            self.messages.append(failed.group(2).rstrip("\"')"))
            return False
        return not any(message and message in text for message in self.messages)


_FAILED_WITH = re.compile(r"encountered an exception:? (\w+): (.+)", re.S)


def _user_error_names() -> set[str]:
    """Class names of `UserError` and its subclasses (as Prefect writes them in a failed state)."""
    from llm.errors import UserError

    names, stack = set(), [UserError]
    while stack:
        cls = stack.pop()
        names.add(cls.__name__)
        stack += cls.__subclasses__()
    return names


@contextmanager
def _console_without_user_errors(enabled: bool = True) -> Iterator[None]:
    """Prefect's console handlers without the records of user-caused failures, for the duration of a
    run. Only the console: a Prefect server's run logs (the API handler) keep the traceback."""
    if not enabled:
        yield
        return
    names = ["", *(name for name in logging.Logger.manager.loggerDict if name.split(".")[0] in ("prefect", "uvicorn"))]
    handlers = {h for name in names for h in logging.getLogger(name).handlers if isinstance(h, logging.StreamHandler)}
    records = _UserErrorRecords()
    for handler in handlers:
        handler.addFilter(records)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(records)


if __name__ == "__main__":
    sys.exit(main())
