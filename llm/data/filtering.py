"""What every filtering step shares: signals stored as columns, rules as data, the first failing rule
recorded with its measured value and threshold.

A filtering step computes its signals for the documents it applies to (by source label), stores every
signal as a column on every document (null where the step does not apply), and drops a document at
the first rule it fails. Because the decision reads only the stored columns (`decide`), a dataset can
be re-filtered with other thresholds without recomputing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llm.data.steps import StepOutput, empty_quarantine, rejected_rows


@dataclass(frozen=True)
class Rule:
    """Drop a document when `signal` is below (`min`) or above (`max`) `threshold`."""

    name: str
    signal: str
    kind: str  # "min": value < threshold fails; "max": value > threshold fails
    threshold: float

    def fails(self, values: np.ndarray) -> np.ndarray:
        # NaN (signal not measurable, e.g. mean word length of no words) never fails a rule by itself.
        with np.errstate(invalid="ignore"):
            return values < self.threshold if self.kind == "min" else values > self.threshold


def applies_to(docs: pa.Table, sources: Sequence[str] | None) -> np.ndarray:
    """Row indices of the documents whose source label is in `sources` (all when None)."""
    if sources is None:
        return np.arange(docs.num_rows)
    mask = pc.is_in(docs.column("source"), value_set=pa.array(list(sources), pa.string()))
    return np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))


def scatter(values: np.ndarray | list, rows: np.ndarray, n: int, type_: pa.DataType) -> pa.Array:
    """A column of `n` rows holding `values` at `rows` and null elsewhere."""
    if len(rows) == n:
        return pa.array(values, type_)
    mask = np.ones(n, dtype=bool)
    mask[rows] = False
    if pa.types.is_string(type_) or isinstance(values, list):
        full: list = [None] * n
        for r, v in zip(rows.tolist(), list(values)):
            full[r] = v
        return pa.array(full, type_)
    arr = np.zeros(n, dtype=np.asarray(values).dtype if len(values) else np.float64)
    arr[rows] = values
    return pa.array(arr, type_, mask=mask)


def with_columns(docs: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    """Append (or replace) signal columns."""
    for name, arr in columns.items():
        idx = docs.schema.get_field_index(name)
        docs = docs.set_column(idx, name, arr) if idx >= 0 else docs.append_column(name, arr)
    return docs


def decide(docs: pa.Table, rules: Sequence[Rule]) -> tuple[np.ndarray, np.ndarray]:
    """(failed rule index per row or -1, value of that rule's signal per row) from stored signal columns."""
    n = docs.num_rows
    if not rules or n == 0:
        return np.full(n, -1), np.full(n, np.nan)
    values = np.stack([
        pc.fill_null(docs.column(r.signal).cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        for r in rules
    ])
    fails = np.stack([r.fails(values[i]) for i, r in enumerate(rules)])
    first = np.where(fails.any(axis=0), fails.argmax(axis=0), -1)
    measured = np.where(first >= 0, values[np.maximum(first, 0), np.arange(n)], np.nan)
    return first, measured


def split_by_rules(docs: pa.Table, step: str, rules: Sequence[Rule],
                   detail: Callable[[Rule], str | None] | None = None) -> StepOutput:
    """Keep the rows that pass every rule; drop the others with the first failing rule's record."""
    first, measured = decide(docs, rules)
    failed = first >= 0
    kept = docs.filter(pa.array(~failed))
    dropped = docs.filter(pa.array(failed))
    idx = first[failed].tolist()
    return StepOutput(
        kept=kept,
        dropped=rejected_rows(
            dropped, step, [rules[i].name for i in idx],
            [None if np.isnan(v) else float(v) for v in measured[failed].tolist()],
            [float(rules[i].threshold) for i in idx],
            [detail(rules[i]) for i in idx] if detail else None,
        ),
        quarantined=empty_quarantine(),
    )
