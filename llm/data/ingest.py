"""The fused per-shard pass: read one input unit, run every per-document step, write one shard.

Extraction and normalization run here today; language ID, quality and PII steps slot into
`build_steps` and run in the same pass, so a document is read and written once however many
per-document steps there are.
"""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa

from llm.config import PipelineConfig
from llm.data import schema
from llm.data.dataset import Counts, ShardRecord, ShardTask, run_shard_stage, write_table
from llm.data.steps import DocumentStep

BATCH_ROWS = 256  # documents per step call: bounds memory for large inputs, amortises Arrow overhead


def build_steps(cfg: PipelineConfig) -> list[DocumentStep]:
    """The per-document steps in the order they run."""
    from llm.data.extract import ExtractStep
    from llm.data.normalize import NormalizeStep

    return [ExtractStep(cfg.data.extract), NormalizeStep(cfg.data.normalize)]


def _batches(records: Iterator[dict]) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Group reader output into (raw documents, quarantined) tables of at most BATCH_ROWS rows."""
    from llm.data.readers import is_quarantine

    raw: list[dict] = []
    bad: list[dict] = []
    for rec in records:
        (bad if is_quarantine(rec) else raw).append(rec)
        if len(raw) + len(bad) >= BATCH_ROWS:
            yield (pa.Table.from_pylist(raw, schema.RAW_SCHEMA),
                   pa.Table.from_pylist(bad, schema.QUARANTINE_SCHEMA))
            raw, bad = [], []
    if raw or bad:
        yield pa.Table.from_pylist(raw, schema.RAW_SCHEMA), pa.Table.from_pylist(bad, schema.QUARANTINE_SCHEMA)


def process_unit(unit, steps: list[DocumentStep]) -> tuple[pa.Table, pa.Table, pa.Table, dict[str, Counts]]:
    """Run the steps over one input unit; returns (kept, rejected, quarantined, per-step counts)."""
    from llm.data.readers import read_unit

    step_counts = {"read": Counts()} | {s.name: Counts() for s in steps}
    kept_parts: list[pa.Table] = []
    dropped_parts: list[list[pa.Table]] = []
    quarantined_parts: list[pa.Table] = []
    for raw, bad in _batches(read_unit(unit)):
        reader = step_counts["read"]
        reader.read += raw.num_rows + bad.num_rows
        reader.kept += raw.num_rows
        reader.quarantined += bad.num_rows
        quarantined_parts.append(bad)
        docs = raw
        for step in steps:
            out = step.apply(docs)
            out.check_accounts_for(docs.num_rows, step.name)
            counts = step_counts[step.name]
            counts.read += docs.num_rows
            counts.kept += out.kept.num_rows
            counts.quarantined += out.quarantined.num_rows
            for rule in out.dropped.column("rule").to_pylist():
                counts.dropped[rule] = counts.dropped.get(rule, 0) + 1
            if out.dropped.num_rows:
                dropped_parts.append(_doc_part(out.dropped))
            quarantined_parts.append(out.quarantined)
            docs = out.kept
        kept_parts.append(docs)
    kept = _concat(kept_parts, schema.DOC_SCHEMA)
    rejected = _concat(dropped_parts, schema.reject_schema(kept.schema))
    quarantined = _concat(quarantined_parts, schema.QUARANTINE_SCHEMA)
    return kept, rejected, quarantined, step_counts


def _doc_part(dropped: pa.Table) -> pa.Table:
    # Steps may add signal columns; rejected shards keep the document columns and the reason, so
    # every rejected shard has one schema whichever step dropped the row.
    cols = [f.name for f in schema.DOC_FIELDS] + [f.name for f in schema.REJECT_FIELDS]
    return dropped.select(cols)


def _concat(parts: list[pa.Table], fallback: pa.Schema) -> pa.Table:
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return fallback.empty_table()
    return pa.concat_tables(parts, promote_options="default")


def _total(step_counts: dict[str, Counts]) -> Counts:
    """Shard-level accounting: read from the reader, the end result from the last step."""
    names = list(step_counts)
    total = Counts(read=step_counts["read"].read, kept=step_counts[names[-1]].kept)
    for counts in step_counts.values():
        total.quarantined += counts.quarantined
        for rule, n in counts.dropped.items():
            total.dropped[rule] = total.dropped.get(rule, 0) + n
    total.dropped = dict(sorted(total.dropped.items()))
    return total


def write_shard(dataset: str, name: str, inputs: list[str], kept: pa.Table, rejected: pa.Table,
                quarantined: pa.Table, counts: Counts, steps: dict[str, Counts] | None = None,
                row_group_rows: int = 1024, compression: str = "zstd", extra: dict | None = None) -> ShardRecord:
    """Write a shard's kept/rejected/quarantine files and return its record (shared by all doc stages)."""
    files = {"data": f"{name}.parquet"}
    nbytes, sha = write_table(dataset, files["data"], kept, row_group_rows, compression)
    if rejected.num_rows:
        files["rejected"] = f"rejected/{name}.parquet"
        write_table(dataset, files["rejected"], rejected, row_group_rows, compression)
    if quarantined.num_rows:
        files["quarantine"] = f"quarantine/{name}.parquet"
        write_table(dataset, files["quarantine"], quarantined, row_group_rows, compression)
    text_bytes = sum(len(t.encode("utf-8")) for t in kept.column("text").to_pylist()) if kept.num_rows else 0
    counts.check(f"{dataset}/{name}")
    return ShardRecord(
        name=name, inputs=list(inputs), rows=kept.num_rows, bytes=nbytes, sha256=sha, counts=counts,
        steps=steps or {}, files=files, extra={"text_bytes": text_bytes, **(extra or {})},
    )


def run_ingest(cfg: PipelineConfig, crawl_uri: str, out_uri: str, executor) -> dict:
    """Plan input units from the configured sources and run the fused pass over each."""
    from llm.data.readers import plan_inputs

    units = plan_inputs(cfg.data.sources, crawl_uri)
    if not units:
        raise ValueError("ingest: the configured sources hold no input files")
    shard_cfg = cfg.data.shard
    tasks = [ShardTask(u.shard, tuple(u.files), u) for u in units]

    def make_shard(task: ShardTask) -> ShardRecord:
        steps = build_steps(cfg)
        kept, rejected, quarantined, step_counts = process_unit(task.payload, steps)
        return write_shard(out_uri, task.name, list(task.inputs), kept, rejected, quarantined,
                           _total(step_counts), step_counts, shard_cfg.row_group_rows, shard_cfg.compression)

    config_hash = cfg.digest("data.sources", "data.extract", "data.normalize")
    inputs = sorted({f for u in units for f in u.files})
    return run_shard_stage("ingest", out_uri, tasks, make_shard, config_hash, executor, inputs)
