"""What every stage task shares: Ray, the executor, the nested MLflow run, the returned summary."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from llm import versions
from llm.config import PipelineConfig
from llm.executor import RayExecutor
from llm.layout import Layout
from llm.tracking import RunTarget, Tracker, log_dict


@dataclass
class StageContext:
    """Handles a stage body needs: output layout, executor, and its MLflow run (None when disabled)."""

    name: str
    cfg: PipelineConfig
    layout: Layout
    executor: RayExecutor
    run: RunTarget | None

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


@contextmanager
def stage(cfg: PipelineConfig, parent_run_id: str | None, name: str) -> Iterator[StageContext]:
    """Run a stage body with a nested MLflow run open (Ray starts when the stage first needs it); the run
    is marked FAILED on error."""
    tracker = Tracker(cfg.tracking, cfg.work_dir)
    run = tracker.start_run(name, parent=parent_run_id, tags={"llmpipe.stage": name}) if parent_run_id else None
    ctx = StageContext(name, cfg, Layout.for_work_dir(cfg.work_dir), RayExecutor(progress=True, ray_config=cfg.ray),
                       run)
    try:
        yield ctx
    except BaseException:
        tracker.finish(run, ok=False)
        raise
    tracker.finish(run, ok=True)
