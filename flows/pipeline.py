"""The llmpipe flows: raw web pages and code in, a trained and evaluated model out.

Run it:

    llmpipe run configs/demo.yaml                   # the whole pipeline, ephemeral Prefect API
    llmpipe run configs/demo.yaml train.max_steps=50
    PREFECT_API_URL=http://127.0.0.1:4200/api llmpipe run configs/demo.yaml   # against a server

Each stage is a task in `tasks/` that runs on Ray and returns a small summary; this module only
wires them together and opens the MLflow parent run that the stages' nested runs hang under.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from prefect import flow

from flows.prefect_logs import run_logs_to_prefect
from llm.config import PipelineConfig, build_config, load_config
from llm.errors import UserError
from llm.layout import Layout
from llm.lineage import redact
from llm.tracking import Tracker
from tasks import data, finetune, train
from tasks.artifacts import mlflow_run_url, publish_run

DATA_STAGES = ["crawl", "ingest", "exact_dedup", "minhash_dedup", "shard", "tokenizer", "tokenize"]
TRAIN_STAGES = ["pretrain", "evaluate", "finetune"]
STAGES = DATA_STAGES + TRAIN_STAGES

_TASKS = {
    "crawl": data.crawl,
    "ingest": data.ingest,
    "exact_dedup": data.exact_dedup,
    "minhash_dedup": data.minhash_dedup,
    "shard": data.shard,
    "tokenizer": data.tokenizer,
    "tokenize": data.tokenize,
    "pretrain": train.pretrain,
    "finetune": finetune.finetune,
}


def resolve_config(config: PipelineConfig | None, config_path: str | None = None,
                   overrides: list[str] | None = None) -> PipelineConfig:
    """The config a flow run uses: the YAML file at `config_path` (local, relative to the project root,
    or s3://...) when given, else the inline `config`; then the dotted `overrides` on top of either."""
    overrides = list(overrides or [])
    if config_path:
        if config is not None and config != PipelineConfig():
            raise UserError("give the config either as config_path or inline (config), not both: the inline "
                            "config differs from the defaults and would be ignored")
        return load_config(config_path, overrides)
    base = config if config is not None else PipelineConfig()
    if not overrides:
        return base
    return build_config(base.model_dump(mode="json", exclude_unset=True), overrides, "the inline config")


def _prefect_run() -> dict:
    """The current Prefect flow run's id and UI page (empty outside a flow run)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return {}
    from prefect.settings import PREFECT_UI_URL

    run_id = str(ctx.flow_run.id)
    out = {"prefect.flow_run_id": run_id, "prefect.flow_run_name": ctx.flow_run.name}
    ui = PREFECT_UI_URL.value()
    if ui and os.environ.get("PREFECT_API_URL"):  # the temporary API's UI is gone with the run
        out["prefect.flow_run_url"] = f"{ui.rstrip('/')}/runs/flow-run/{run_id}"
    return out


def run_stages(config: PipelineConfig, stages: list[str], refresh: bool = False) -> dict:
    """Run the named stages in pipeline order under one MLflow parent run; returns their summaries.

    A stage whose identity (code, config, input versions) has a complete version is skipped. The work
    directory is locked for the run: a second run on it stops at once, naming the first. `refresh`
    recrawls with conditional requests (the nightly refresh) instead of reusing the current crawl.
    """
    from llm.workdir_lock import WorkDirLock

    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise UserError(f"unknown stage(s) {unknown}; stages are {STAGES}")
    layout = Layout.for_work_dir(config.work_dir)
    prefect_run = _prefect_run()
    with WorkDirLock(layout.work_dir, description=f"llmpipe {'+'.join(stages)} ({config.name})"), \
            run_logs_to_prefect():
        tracker = Tracker(config.tracking, config.work_dir)
        parent = tracker.start_run(config.name, params=redact(config.model_dump(mode="json")),
                                   tags={"llmpipe.stages": ",".join(stages), **prefect_run})
        parent_id = parent.run_id if parent else None
        parent_url = mlflow_run_url(tracker.uri, tracker.experiment_id(), parent_id) if parent_id else None
        results: dict[str, dict] = {}
        ok = False
        try:
            previous: list[dict] = []  # the stage before: its result draws the chain in Prefect's run graph
            for name in [s for s in STAGES if s in stages]:
                crawls = any(s.kind == "crawl" for s in config.data.sources)
                if name == "crawl" and not crawls:
                    continue  # nothing reads the crawl: skip fetching it
                if name == "finetune" and len(stages) > 1 and config.finetune.data.path is None and not crawls:
                    continue  # no SFT data and no crawled docs to build pairs from: the pipeline ends at evaluate
                if name == "crawl":
                    results[name] = data.crawl(config, parent_id, refresh=refresh, wait_for=previous)
                elif name == "evaluate":
                    checkpoint = results.get("pretrain", {}).get("checkpoint_uri") or \
                        train.final_checkpoint(layout.train)
                    results[name] = train.evaluate(config, checkpoint, parent_id, wait_for=previous)
                else:
                    results[name] = _TASKS[name](config, parent_id, wait_for=previous)
                previous = [results[name]]
            ok = True
        finally:
            tracker.finish(parent, ok=ok)
    result = {"stages": results, "tracking_uri": tracker.uri, "parent_run_id": parent_id,
              "mlflow_ui": tracker.ui_command(), "work_dir": layout.work_dir}
    if parent_url:
        result["mlflow_run_url"] = parent_url
    from llm.summary import format_summary

    publish_run(format_summary(result), parent_url)
    return result


# How long the temporary API may take to start. Prefect's 20 s is about three times what it takes on
# a quiet 2-core machine: with every core busy, runs failed before doing anything.
_LOCAL_API_STARTUP_S = 300
# How long the temporary API's SQLite connections wait for a lock (Prefect's 10 s): opening one switches
# the database to WAL, which waits for every other writer; on a busy machine, or with two runs starting
# on one PREFECT_HOME, that wait ended in "database is locked".
_LOCAL_API_DATABASE_TIMEOUT_S = 60.0


@contextmanager
def local_run_settings() -> Iterator[None]:
    """Prefect settings for a run on this machine's temporary API (no `PREFECT_API_URL`): no flow-run
    heartbeats (they let a server spot crashed runs; the temporary API ends with the process, and its
    heartbeat thread only adds up to a second to the end of every run), and time for the temporary API
    to start and for its database to take locks on a busy machine, unless the user set
    `PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`, `PREFECT_SERVER_DATABASE_TIMEOUT` or
    `PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT` (environment, profile or prefect.toml). With a server,
    nothing changes."""
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.settings import (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT,
                                  PREFECT_SERVER_DATABASE_TIMEOUT, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                                  temporary_settings)

    # Defaults only: a value the user set, from any of Prefect's sources and under any of its names,
    # stays. The temporary API's process is given the resulting settings.
    defaults = {
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: _LOCAL_API_STARTUP_S,
        PREFECT_SERVER_DATABASE_TIMEOUT: _LOCAL_API_DATABASE_TIMEOUT_S,
        PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT: _LOCAL_API_DATABASE_TIMEOUT_S,
    }
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}, set_defaults=defaults):
        yield


# Every flow takes the config three ways: a YAML file (`config_path`, local or s3://), inline (`config`,
# the form the Prefect UI draws from the config's field descriptions), and dotted `overrides` on either.
# The run's summary is its persisted result.
_CONFIG_ARGS = """
    Args:
        config: The pipeline config, inline (used when no config_path is given).
        config_path: A YAML config file to use instead of the inline config: a path relative to the
            project root on the worker (e.g. configs/demo.yaml), an absolute path, or s3://bucket/key.
        overrides: Dotted overrides applied on top, e.g. ["train.max_steps=50", "work_dir=s3://b/run"].
"""


def _with_config_args(fn):
    fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n" + _CONFIG_ARGS
    return fn


@flow(name="llmpipe-pipeline", log_prints=True, persist_result=True)
@_with_config_args
def pipeline(config: PipelineConfig = PipelineConfig(), config_path: str | None = None,
             overrides: list[str] | None = None) -> dict:
    """End to end: crawl, ingest, exact dedup, MinHash dedup, shard, tokenizer, tokenize, pretrain, evaluate,
    finetune."""
    return run_stages(resolve_config(config, config_path, overrides), STAGES)


@flow(name="llmpipe-pretrain", log_prints=True, persist_result=True)
@_with_config_args
def pretrain_flow(config: PipelineConfig = PipelineConfig(), config_path: str | None = None,
                  overrides: list[str] | None = None) -> dict:
    """Pre-train on the current token files of the work directory (skipped when a run with the same
    model, training config and tokens is current)."""
    return run_stages(resolve_config(config, config_path, overrides), ["pretrain"])


@flow(name="llmpipe-evaluate", log_prints=True, persist_result=True)
@_with_config_args
def evaluate_flow(config: PipelineConfig = PipelineConfig(), config_path: str | None = None,
                  overrides: list[str] | None = None) -> dict:
    """Held-out loss, perplexity and sampled continuations of the current pretrained model."""
    return run_stages(resolve_config(config, config_path, overrides), ["evaluate"])


@flow(name="llmpipe-finetune", log_prints=True, persist_result=True)
@_with_config_args
def finetune_flow(config: PipelineConfig = PipelineConfig(), config_path: str | None = None,
                  overrides: list[str] | None = None) -> dict:
    """Fine-tune the current pretrained model (or `finetune.base`: a checkpoint or `models:/NAME@ALIAS`)
    on SFT data with full fine-tuning, LoRA, prefix tuning or adapters, and register the result."""
    return run_stages(resolve_config(config, config_path, overrides), ["finetune"])


@flow(name="llmpipe-data-refresh", log_prints=True, persist_result=True)
def data_refresh(config: PipelineConfig = PipelineConfig(), config_path: str | None = None,
                 overrides: list[str] | None = None, recrawl: bool = True) -> dict:
    """The data half, crawl to token files, as an incremental refresh: the site is recrawled with
    conditional requests (only new and changed pages are written), sources are listed again, and only
    new input shards are processed, deduplicated against the existing corpus.

    Args:
        config: The pipeline config, inline (used when no config_path is given).
        config_path: A YAML config file to use instead of the inline config: a path relative to the
            project root on the worker (e.g. configs/demo.yaml), an absolute path, or s3://bucket/key.
        overrides: Dotted overrides applied on top, e.g. ["data.crawl.max_pages=500"].
        recrawl: Recrawl the site with conditional requests (off: reuse the current crawl).
    """
    return run_stages(resolve_config(config, config_path, overrides), DATA_STAGES, refresh=recrawl)


@flow(name="llmpipe-stages", log_prints=True, persist_result=True)
def stages_flow(config: PipelineConfig = PipelineConfig(), stages: list[str] = ["ingest"],  # noqa: B006
                config_path: str | None = None, overrides: list[str] | None = None) -> dict:
    """Run a chosen subset of stages (in pipeline order) against an existing work directory.

    Args:
        config: The pipeline config, inline (used when no config_path is given).
        stages: The stages to run, e.g. ["ingest", "exact_dedup"].
        config_path: A YAML config file to use instead of the inline config (local or s3://).
        overrides: Dotted overrides applied on top.
    """
    return run_stages(resolve_config(config, config_path, overrides), stages)
