"""What every task of a MinHash run shares: the plan (small, picklable), global document numbers, the
keeper order, and the shapes of the files the shuffles pass between tasks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llm import storage
from llm.config import MinHashConfig
from llm.data.minhash import partitions
from llm.errors import UserError

# Columns (name -> dtype) of each shuffle's files, for reading an empty partition.
BANDS = {"band": "int32", "hash": "uint64", "doc": "int64", "prio": "float64"}
URLS = {"hash": "uint64", "doc": "int64", "prio": "float64"}
PAIRS = {"a": "int64", "b": "int64", "pa": "float64"}
EDGES = {"a": "int64", "b": "int64", "pa": "float64", "j": "float64"}
REMOVED = {"doc": "int64", "keeper": "int64", "j": "float64", "label": "int64", "url": "bool"}
ID_REQUESTS = {"node": "int64", "to": "int64"}
IDS = {"node": "int64", "id": "str"}


@dataclass(frozen=True)
class Plan:
    """Everything a task needs to know about the run (picklable, small).

    Documents are numbered globally by (input shard order, row); documents of an earlier run's index
    get negative numbers (see `index`)."""

    in_uri: str
    out_uri: str
    work: str
    cfg: MinHashConfig
    bands: int
    rows: int
    partitions: int
    names: tuple[str, ...]
    data_rels: tuple[str, ...]
    bases: tuple[int, ...]  # global index of each shard's first row

    def shard_of(self, docs: np.ndarray) -> np.ndarray:
        """Input shard of each document (-1 for index documents)."""
        return np.searchsorted(np.asarray(self.bases), docs, side="right") - 1

    def folder(self, name: str) -> str:
        return storage.join(self.work, name)

    def file(self, folder: str, s: int) -> str:
        """Shard s's file in a per-shard folder of the work area."""
        return storage.join(self.folder(folder), f"{self.names[s]}{partitions.SUFFIX}")

    def shard_uri(self, s: int) -> str:
        return storage.join(self.in_uri, self.data_rels[s])


def bands_and_rows(cfg: MinHashConfig) -> tuple[int, int]:
    if cfg.auto_bands:
        from llm.data.minhash.lsh import choose_bands

        return choose_bands(cfg.threshold, cfg.num_perm, cfg.fp_weight, cfg.fn_weight)
    return cfg.bands, cfg.rows


def keeper_priority(docs: pa.Table, cfg: MinHashConfig) -> np.ndarray:
    """Smaller is kept first; ties go to input order. Missing values rank last."""
    n = docs.num_rows
    if cfg.keeper == "first":
        return np.zeros(n)
    if cfg.keeper == "longest":
        return -pc.utf8_length(docs.column("text")).to_numpy(zero_copy_only=False).astype(np.float64)
    if cfg.keeper == "quality":
        if cfg.quality_column not in docs.column_names:
            raise UserError(f"data.minhash.keeper is 'quality' but documents have no column "
                             f"{cfg.quality_column!r} (set data.minhash.quality_column)")
        values = pc.cast(docs.column(cfg.quality_column), pa.float64()).to_numpy(zero_copy_only=False)
        return np.where(np.isnan(values), np.inf, -values)
    out = np.full(n, np.inf)
    for i, created in enumerate(docs.column("created").to_pylist()):
        try:
            out[i] = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp() if created else np.inf
        except ValueError:
            pass  # unparseable dates rank with missing ones
    return out


def lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[i] of the keys[i] equal to each query (every query must be among the keys)."""
    order = np.argsort(keys, kind="stable")
    return values[order][np.searchsorted(keys[order], query)]


def url_removed(plan: Plan, s: int) -> dict[str, np.ndarray]:
    """Documents of shard s removed as URL duplicates, with their keepers."""
    return partitions.read_partition(plan.folder("url_removed"), s, {"doc": "int64", "keeper": "int64"})
