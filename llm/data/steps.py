"""The per-document step interface: a step takes a table of documents and says what goes on.

A step never decides where it runs or how its outputs are stored; `llm.data.shard_pass` fuses a list of
steps into one pass per shard and does the accounting. Each input row ends in exactly one of the three
outputs, which is what `read = kept + dropped + quarantined` rests on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from llm.data import schema


@dataclass
class StepOutput:
    kept: pa.Table  # documents that go on (DOC_SCHEMA columns + any signal columns)
    dropped: pa.Table  # documents removed by a rule: doc columns + schema.REJECT_FIELDS
    quarantined: pa.Table  # QUARANTINE_SCHEMA rows

    def check_accounts_for(self, rows_in: int, step: str) -> None:
        out = self.kept.num_rows + self.dropped.num_rows + self.quarantined.num_rows
        if out != rows_in:
            raise AssertionError(f"step {step!r} lost documents: {rows_in} in, {out} out")


class DocumentStep(Protocol):
    """A per-document step. `apply` must account for every input row."""

    name: str

    def apply(self, docs: pa.Table) -> StepOutput: ...


def rejected_rows(docs: pa.Table, stage: str, rules: list[str], values: list[float | None],
                  thresholds: list[float | None], details: list[str | None] | None = None) -> pa.Table:
    """Append the REJECT_FIELDS columns to `docs` (one entry per row)."""
    n = docs.num_rows
    details = details if details is not None else [None] * n
    cols = {
        "stage": pa.array([stage] * n, pa.string()),
        "rule": pa.array(rules, pa.string()),
        "value": pa.array(values, pa.float64()),
        "threshold": pa.array(thresholds, pa.float64()),
        "detail": pa.array(details, pa.string()),
    }
    out = docs
    for name, arr in cols.items():
        out = out.append_column(name, arr)
    return out


def empty_quarantine() -> pa.Table:
    return schema.QUARANTINE_SCHEMA.empty_table()
