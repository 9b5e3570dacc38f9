"""What every stage task shares: Ray, the executor (`ray.executor`), the nested MLflow run, the returned summary."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from prefect import task
from prefect.cache_policies import NONE

from llm import versions
from llm.config import PipelineConfig
from llm.executor import ProcessExecutor, RayExecutor
from llm.layout import Layout
from llm.tracking import RunTarget, Tracker, log_dict
from tasks.artifacts import mlflow_run_url, publish_stage
from tasks.retry import RETRIES, RETRY_DELAYS_S, RETRY_JITTER, retry_transient


# Under the project's `llm` logger, so that the line reaches the console and the Prefect run's logs alike.
log = logging.getLogger("llm.stages")


def stage_task(name: str):
    """The Prefect task decorator every stage uses: no result caching (a stage decides reuse itself, by
    its identity), and retries with backoff for transient infrastructure errors only (`tasks.retry`)."""
    return task(name=name, cache_policy=NONE, retries=RETRIES, retry_delay_seconds=RETRY_DELAYS_S,
                retry_jitter_factor=RETRY_JITTER, retry_condition_fn=retry_transient)


@dataclass
class StageContext:
    """Handles a stage body needs: output layout, executor, and its MLflow run (None when disabled)."""

    name: str
    cfg: PipelineConfig
    layout: Layout
    executor: RayExecutor | ProcessExecutor
    run: RunTarget | None
    run_url: str | None = None  # the MLflow UI's page of `run`, when the store is a server

    def report(self, manifest: dict, uri: str, extra: dict | None = None) -> dict:
        """Log the manifest's counts to the stage run and return the small summary the flow passes on."""
        totals = manifest.get("totals", {})
        counts = totals.get("counts", {})
        summary = {
            "stage": self.name,
            "uri": uri,
            "version": manifest.get("version"),
            "reused": bool(manifest.get("reused")),
            "config_hash": manifest.get("config_hash"),
            "shards": totals.get("shards"),
            "rows": totals.get("rows"),
            "counts": counts,
            "steps": totals.get("steps", {}),
            **(extra or {}),
        }
        if self.run is not None:
            metrics = {}
            if counts:
                metrics = {"docs_read": counts["read"], "docs_kept": counts["kept"],
                           "docs_dropped": sum(counts["dropped"].values()), "docs_quarantined": counts["quarantined"]}
                metrics.update({f"dropped.{rule}": n for rule, n in counts["dropped"].items()})
            metrics.update({k: v for k, v in (extra or {}).items() if isinstance(v, (int, float))})
            if metrics:
                self.run.log_metrics(metrics, step=0)
            client = self.run.client()
            client.log_param(self.run.run_id, "output_uri", uri)
            if manifest.get("version"):
                client.log_param(self.run.run_id, "version", manifest["version"])
                client.set_tag(self.run.run_id, "llmpipe.reused", str(summary["reused"]).lower())
                client.set_tag(self.run.run_id, "llmpipe.code_digest", manifest.get("identity", {}).get("code", ""))
            if not summary["reused"]:  # a reused version's record is with the run that made it
                if manifest.get("version"):
                    from llm.lineage_chain import chain

                    log_dict(self.run, {"chain": chain(versions.pinned(uri, manifest["version"]))},
                             f"{self.name}_lineage.json")
                log_dict(self.run, manifest, f"{self.name}_manifest.json")
        log.info("%s", summary_line(summary))
        publish_stage(summary, self.run_url)
        return summary

    def log_data_stats(self, dataset: str, manifest: dict) -> None:
        """Log drops per step and rule and documents per language (`llmpipe stats`) to the stage run of
        a version it made (a reused one has them in the run that made it)."""
        if self.run is None or manifest.get("reused"):
            return
        from llm.data.inspect import format_stats, stats

        data = stats(dataset)
        metrics = {f"dropped.{step}.{rule}": n for step, c in data["steps"].items() for rule, n in c["dropped"].items()}
        metrics.update({f"lang.{lang}": n for lang, n in data["languages"]["kept"].items() if lang.isalnum()})
        if metrics:
            self.run.log_metrics(metrics, step=0)
        log_dict(self.run, data, f"{self.name}_stats.json")
        self.run.client().log_text(self.run.run_id, format_stats(data), f"{self.name}_stats.txt")


def summary_line(summary: dict) -> str:
    """One log line for a finished stage: its accounting, version and whether it was reused."""
    parts = [summary["stage"]]
    counts = summary.get("counts") or {}
    if counts:
        parts.append(f"read {counts['read']:,}, kept {counts['kept']:,}, dropped {sum(counts['dropped'].values()):,}, "
                     f"quarantined {counts['quarantined']:,}")
    if summary.get("version"):
        parts.append(f"version {summary['version']} ({'reused' if summary.get('reused') else 'made'})")
    parts.append(f"output {summary['uri']}")
    return ": ".join(parts[:2]) + ("; " + "; ".join(parts[2:]) if len(parts) > 2 else "")


@contextmanager
def stage(cfg: PipelineConfig, parent_run_id: str | None, name: str) -> Iterator[StageContext]:
    """Run a stage body with a nested MLflow run open (Ray starts when the stage first needs it); the run
    is marked FAILED on error."""
    tracker = Tracker(cfg.tracking, cfg.work_dir)
    run = tracker.start_run(name, parent=parent_run_id, tags={"llmpipe.stage": name}) if parent_run_id else None
    url = mlflow_run_url(tracker.uri, tracker.experiment_id(), run.run_id) if run is not None else None
    executor = stage_executor(cfg)
    ctx = StageContext(name, cfg, Layout.for_work_dir(cfg.work_dir), executor, run, url)
    try:
        yield ctx
    except BaseException:
        tracker.finish(run, ok=False)
        raise
    finally:
        if isinstance(executor, ProcessExecutor):
            executor.close()  # the stage's workers end with it
    tracker.finish(run, ok=True)


def stage_executor(cfg: PipelineConfig) -> RayExecutor | ProcessExecutor:
    """The executor of a stage's shard work, as `ray.executor` says."""
    if cfg.ray.executor == "processes":
        return ProcessExecutor(progress=True, ray_config=cfg.ray)
    return RayExecutor(progress=True, ray_config=cfg.ray)
