"""What a Prefect run shows of the work: a markdown artifact per stage (its counts and drop table), a
link to the stage's MLflow run, and the run's summary.

Artifacts are written only inside a flow or task run (the CLI runs against Prefect's temporary API, and
a plain function call has no run to attach them to); failing to write one never fails the stage.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("llm.artifacts")

# Prefect artifact keys: lowercase letters, digits and dashes.
_KEY_CHARS = re.compile(r"[^a-z0-9-]+")


def artifact_key(*parts: str) -> str:
    """A valid Prefect artifact key from free-form parts (`exact_dedup` -> `exact-dedup`)."""
    return "-".join(_KEY_CHARS.sub("-", p.lower()).strip("-") for p in parts if p)


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI's page for a run, when the tracking store is a server a browser can open (http/https);
    None for a local file or SQLite store (its UI is `mlflow ui`, at an address chosen then)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def stage_markdown(summary: dict) -> str:
    """A stage's summary as markdown: version and reuse, the record accounting, the drop table by rule,
    and the stage's other figures."""
    name = summary.get("stage", "stage")
    lines = [f"# {name}", ""]
    version = summary.get("version")
    if version:
        state = "reused (inputs, code and config unchanged)" if summary.get("reused") else "made by this run"
        lines += [f"Version `{version}`, {state}.", ""]
    if summary.get("uri"):
        lines += [f"Output: `{summary['uri']}`", ""]
    counts = summary.get("counts") or {}
    if counts:
        dropped = counts.get("dropped") or {}
        lines += ["| read | kept | dropped | quarantined |", "| ---: | ---: | ---: | ---: |",
                  f"| {counts.get('read', 0):,} | {counts.get('kept', 0):,} | {sum(dropped.values()):,} "
                  f"| {counts.get('quarantined', 0):,} |", ""]
        if dropped:
            lines += ["| dropped by | documents |", "| --- | ---: |"]
            lines += [f"| {rule} | {n:,} |" for rule, n in sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))]
            lines.append("")
    figures = {k: v for k, v in summary.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("shards", "rows")}
    for key in ("shards", "rows"):
        if isinstance(summary.get(key), int):
            figures = {key: summary[key], **figures}
    if figures:
        lines += ["| figure | value |", "| --- | ---: |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in figures.items()]
        lines.append("")
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return f"{value:,}"


def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def publish_stage(summary: dict, run_url: str | None) -> None:
    """Write the stage's markdown artifact, and a link artifact to its MLflow run when it has a URL."""
    if not _in_prefect_run():
        return
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    name = summary.get("stage", "stage")
    try:
        create_markdown_artifact(stage_markdown(summary), key=artifact_key(name, "summary"),
                                 description=f"{name}: counts and drops")
        if run_url:
            create_link_artifact(run_url, link_text=f"MLflow run of {name}", key=artifact_key(name, "mlflow"),
                                 description=f"the {name} stage's MLflow run: parameters, metrics, artifacts")
    except Exception as exc:  # the work is done and recorded; a UI extra must not fail it
        log.warning("could not write the Prefect artifacts of %s: %s", name, exc)


def publish_run(summary_text: str, run_url: str | None, name: str = "pipeline") -> None:
    """Write the run's summary (the text the CLI prints) and a link to the MLflow parent run."""
    if not _in_prefect_run():
        return
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    try:
        create_markdown_artifact(f"```\n{summary_text.strip()}\n```", key=artifact_key(name, "run-summary"),
                                 description="the run's summary: counts per stage, tokens, losses, where to look")
        if run_url:
            create_link_artifact(run_url, link_text="MLflow parent run", key=artifact_key(name, "mlflow-run"),
                                 description="the MLflow run every stage's run is nested under")
    except Exception as exc:
        log.warning("could not write the Prefect artifacts of the run: %s", exc)
