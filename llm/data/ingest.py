"""The fused per-shard pass: read one input unit, run every per-document step, write one shard.

Extraction, normalization, PII scrubbing, language ID, quality and content filtering all run in
the same pass (`build_steps`), so a document is read and written once however many per-document
steps there are.
"""

from __future__ import annotations

import time
from typing import Iterator

import pyarrow as pa

from llm import storage, versions
from llm.config import PipelineConfig, stable_hash
from llm.data import schema
from llm.data.dataset import Counts, ShardRecord, ShardTask, run_shard_stage, write_shard, writer_config
from llm.data.quarantine import quarantined_records, seal
from llm.data.steps import DocumentStep
from llm.errors import UserError
from llm.lineage import Identity, identity

BATCH_ROWS = 256  # documents per step call: bounds memory for large inputs, amortises Arrow overhead


def build_steps(cfg: PipelineConfig) -> list[DocumentStep]:
    """The per-document steps in the order they run."""
    from llm.data.content import ContentStep
    from llm.data.extract import ExtractStep
    from llm.data.langid import LangIdStep
    from llm.data.normalize import NormalizeStep
    from llm.data.pii import PiiStep
    from llm.data.quality import QualityStep

    d = cfg.data
    steps: list[DocumentStep] = [ExtractStep(d.extract), NormalizeStep(d.normalize)]
    # PII runs before any filter that can drop a document, so rejected shards only ever hold scrubbed text.
    if d.pii.enabled:
        steps.append(PiiStep(d.pii))
    if d.langid.enabled:
        steps.append(LangIdStep(d.langid))
    if d.quality.enabled:
        steps.append(QualityStep(d.quality))
    if d.content.enabled:
        steps.append(ContentStep(d.content))
    return steps


def output_schema(steps: list[DocumentStep]) -> pa.Schema:
    """Document columns plus every signal column the steps add, in step order: one schema for every
    kept and (with the reject fields) every rejected shard, whichever step a row stopped at."""
    fields = list(schema.DOC_FIELDS)
    for step in steps:
        fields += list(getattr(step, "signal_fields", []))
    return pa.schema(fields)


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


def process_unit(unit, steps: list[DocumentStep], keep_raw: bool = False
                 ) -> tuple[pa.Table, pa.Table, pa.Table, dict[str, Counts]]:
    """Run the steps over one input unit; returns (kept, rejected, quarantined, per-step counts).

    Nothing leaves unscrubbed when the PII step runs: it scrubs what it keeps, and its scrubber is
    applied to the documents steps before it dropped and to every quarantine entry (`quarantine.seal`;
    `keep_raw` keeps quarantined bytes as they were read)."""
    from llm.data.pii import PiiStep
    from llm.data.readers import read_unit

    pii = next((s for s in steps if isinstance(s, PiiStep)), None)
    before_pii = {s.name for s in steps[: steps.index(pii)]} if pii is not None else set()
    step_counts = {"read": Counts()} | {s.name: Counts() for s in steps}
    doc_schema = output_schema(steps)
    rej_schema = schema.reject_schema(doc_schema)
    kept_parts: list[pa.Table] = []
    dropped_parts: list[list[pa.Table]] = []
    quarantined_parts: list[pa.Table] = []
    for raw, bad in _batches(read_unit(unit)):
        reader = step_counts["read"]
        bad_records = quarantined_records(bad)
        reader.read += raw.num_rows + bad_records
        reader.kept += raw.num_rows
        reader.quarantined += bad_records
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
                dropped = out.dropped if step.name not in before_pii else pii.scrub_table(out.dropped)
                dropped_parts.append(conform(dropped, rej_schema))
            quarantined_parts.append(out.quarantined)
            docs = out.kept
        kept_parts.append(conform(docs, doc_schema))
    kept = _concat(kept_parts, doc_schema)
    rejected = _concat(dropped_parts, rej_schema)
    quarantined = seal(_concat(quarantined_parts, schema.QUARANTINE_SCHEMA),
                       pii.scrub_strings if pii is not None else None, keep_raw)
    return kept, rejected, quarantined, step_counts


def conform(table: pa.Table, target: pa.Schema) -> pa.Table:
    """`table` with exactly `target`'s columns: signals of steps a row never reached are null, so a
    rejected row keeps every signal measured before its drop (`llmpipe explain` shows them)."""
    cols = []
    for f in target:
        idx = table.schema.get_field_index(f.name)
        cols.append(table.column(idx).cast(f.type) if idx >= 0 else pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=target)


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


INGEST_SECTIONS = ("extract", "normalize", "pii", "langid", "quality", "content", "quarantine")


def ingest_identity(cfg: PipelineConfig, units) -> Identity:
    """Ingest's identity: its code, its config, and every input file's path, size and digest."""
    config = {"sources": [s.model_dump(mode="json") for s in cfg.data.sources],
              "steps": {k: getattr(cfg.data, k).model_dump(mode="json") for k in INGEST_SECTIONS},
              "writer": writer_config(cfg.data.shard)}
    files = stable_hash([[u.shard, list(u.fingerprint)] for u in units])
    return identity("ingest", config, {"files": files})


def run_ingest(cfg: PipelineConfig, crawl_uri: str, out_uri: str, executor) -> dict:
    """Plan input units from the configured sources and run the fused pass over each unit whose files,
    source config or processing changed; the new version reuses every other shard."""
    from llm.data.readers import plan_sources

    started = time.time()
    if not cfg.data.sources:
        raise UserError("data.sources is empty: ingest has nothing to read; list at least one source "
                        "(see configs/demo.yaml)")
    plan = plan_sources(cfg.data.sources, crawl_uri, storage.join(out_uri, versions.CACHE, "file_digests.json"))
    units = plan.units
    if not units:
        skipped = "".join(f"; {reason}" for reason in plan.skipped.values())
        raise UserError(f"ingest: the configured sources (data.sources) hold no input files{skipped}")
    ident = ingest_identity(cfg, units)
    parents = {}
    if any(s.kind == "crawl" for s in cfg.data.sources) and versions.current(crawl_uri):
        parents["crawl"] = versions.pinned(crawl_uri, versions.current(crawl_uri))
    reused = versions.reuse(out_uri, ident)
    if reused is not None:  # this run's reasons for what it skipped (a skip is not part of the identity)
        return {**reused, "sources": plan.by_source()}
    shard_cfg = cfg.data.shard
    steps_config = {"steps": ident.config["steps"], "writer": ident.config["writer"]}
    tasks = [ShardTask(u.shard, tuple(u.files), u,
                       ident.shard_key(config=steps_config, source=u.source.model_dump(mode="json"),
                                       files=[list(f) for f in u.fingerprint]))
             for u in units]

    def make_shard(task: ShardTask) -> ShardRecord:
        steps = build_steps(cfg)
        kept, rejected, quarantined, step_counts = process_unit(task.payload, steps, cfg.data.quarantine.keep_raw)
        inputs = [task.payload.shown(f) for f in task.inputs]
        return write_shard(out_uri, task.name, inputs, kept, rejected, quarantined, _total(step_counts),
                           step_counts, shard_cfg.row_group_rows, shard_cfg.compression, key=task.key)

    # The rules travel with the dataset so `llmpipe explain` can show each signal next to its threshold.
    rules = {step.name: [{"rule": r.name, "signal": r.signal, "kind": r.kind, "threshold": r.threshold}
                         for r in getattr(step, "rules", [])] for step in build_steps(cfg)}
    # Per source its unit count, and why a source was left out: a skipped source shows in the counts.
    return run_shard_stage(ident, out_uri, tasks, make_shard, executor, parents, started,
                           extra={"rules": {k: v for k, v in rules.items() if v}, "step_order": list(rules),
                                  "sources": plan.by_source()})
