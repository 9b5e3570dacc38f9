"""Datasets: a folder of Parquet shards plus `_manifest.json`, and the resumable shard-stage runner.

Layout of a dataset folder written by a stage:

    part-xxxxx.parquet          kept documents (one file per output shard)
    rejected/part-xxxxx.parquet dropped documents with stage, rule, value, threshold, detail
    quarantine/part-xxxxx.parquet  bad input with its error
    _shards/part-xxxxx.json     per-shard record, written last: the shard's commit marker
    _manifest.json              every shard record plus totals, written when all shards are done

A shard whose record exists with the same config hash and code version is skipped on rerun, so a
killed run resumes where it stopped. Nothing time- or host-dependent goes into records, so two runs
over the same input give byte-identical files.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import pyarrow as pa

import llm
from llm import storage

MANIFEST = "_manifest.json"
SHARD_RECORDS = "_shards"


@dataclass
class Counts:
    """Document accounting for one step or shard: read = kept + dropped + quarantined."""

    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # rule -> documents
    quarantined: int = 0

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def add(self, other: "Counts") -> None:
        self.read += other.read
        self.kept += other.kept
        self.quarantined += other.quarantined
        merged = Counter(self.dropped)
        merged.update(other.dropped)
        self.dropped = dict(sorted(merged.items()))

    def check(self, where: str) -> None:
        if self.read != self.kept + self.dropped_total + self.quarantined:
            raise AssertionError(
                f"{where}: read {self.read} != kept {self.kept} + dropped {self.dropped_total} "
                f"+ quarantined {self.quarantined}"
            )

    def to_json(self) -> dict:
        return {"read": self.read, "kept": self.kept, "dropped": dict(sorted(self.dropped.items())),
                "quarantined": self.quarantined}

    @classmethod
    def from_json(cls, data: dict) -> "Counts":
        return cls(data["read"], data["kept"], dict(data["dropped"]), data["quarantined"])


@dataclass
class ShardRecord:
    """What one output shard holds and how it was made."""

    name: str
    inputs: list[str]
    rows: int
    bytes: int
    sha256: str
    counts: Counts
    steps: dict[str, Counts] = field(default_factory=dict)  # per fused step, in order
    files: dict[str, str] = field(default_factory=dict)  # role -> path relative to the dataset
    extra: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    code_version: str = llm.__version__

    def to_json(self) -> dict:
        data = asdict(self)
        data["counts"] = self.counts.to_json()
        data["steps"] = {k: v.to_json() for k, v in self.steps.items()}
        return data

    @classmethod
    def from_json(cls, data: dict) -> "ShardRecord":
        data = dict(data)
        data["counts"] = Counts.from_json(data["counts"])
        data["steps"] = {k: Counts.from_json(v) for k, v in data.get("steps", {}).items()}
        return cls(**data)


def dumps(data: Any) -> str:
    """Canonical JSON used for every record and manifest (sorted keys, stable floats)."""
    return json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def record_uri(dataset: str, shard: str) -> str:
    return storage.join(dataset, SHARD_RECORDS, f"{shard}.json")


def load_record(dataset: str, shard: str) -> ShardRecord | None:
    uri = record_uri(dataset, shard)
    if not storage.exists(uri):
        return None
    return ShardRecord.from_json(json.loads(storage.read_text(uri)))


def write_record(dataset: str, record: ShardRecord) -> None:
    storage.write_text(record_uri(dataset, record.name), dumps(record.to_json()))


def is_done(dataset: str, shard: str, config_hash: str) -> bool:
    """True when the shard's record and files exist and were made with this config and code."""
    rec = load_record(dataset, shard)
    if rec is None or rec.config_hash != config_hash or rec.code_version != llm.__version__:
        return False
    return all(storage.exists(storage.join(dataset, rel)) for rel in rec.files.values())


def read_manifest(dataset: str) -> dict:
    uri = storage.join(dataset, MANIFEST)
    if not storage.exists(uri):
        raise FileNotFoundError(f"{dataset}: no {MANIFEST}; has the stage that writes it run?")
    return json.loads(storage.read_text(uri))


def shard_files(dataset: str, role: str = "data") -> list[str]:
    """URIs of the dataset's files of one role (data, rejected, quarantine, ...) in shard order."""
    manifest = read_manifest(dataset)
    return [storage.join(dataset, s["files"][role]) for s in manifest["shards"] if role in s["files"]]


def write_manifest(dataset: str, stage: str, config_hash: str, inputs: list[str],
                   records: Iterable[ShardRecord], extra: dict | None = None) -> dict:
    """Assemble shard records (sorted by name) and totals into `_manifest.json`."""
    records = sorted(records, key=lambda r: r.name)
    total = Counts()
    steps: dict[str, Counts] = {}
    for rec in records:
        rec.counts.check(f"{stage}/{rec.name}")
        total.add(rec.counts)
        for name, counts in rec.steps.items():
            steps.setdefault(name, Counts()).add(counts)
    total.check(stage)
    manifest = {
        "stage": stage,
        "config_hash": config_hash,
        "code_version": llm.__version__,
        "inputs": [storage.relative(uri, dataset) for uri in inputs],
        "shards": [r.to_json() for r in records],
        "totals": {
            "shards": len(records),
            "rows": sum(r.rows for r in records),
            "bytes": sum(r.bytes for r in records),
            "counts": total.to_json(),
            "steps": {k: v.to_json() for k, v in steps.items()},
        },
    }
    if extra:
        manifest.update(extra)
    storage.write_text(storage.join(dataset, MANIFEST), dumps(manifest))
    return manifest


def write_table(dataset: str, rel: str, table: pa.Table, row_group_rows: int = 1024,
                compression: str = "zstd") -> tuple[int, str]:
    return storage.write_parquet(storage.join(dataset, rel), table, row_group_rows, compression)


@dataclass(frozen=True)
class ShardTask:
    """One unit of a shard stage: the output shard's name and whatever the stage needs to make it."""

    name: str
    inputs: tuple[str, ...]
    payload: Any = None


def run_shard_stage(
    stage: str,
    dataset: str,
    tasks: list[ShardTask],
    make_shard: Callable[[ShardTask], ShardRecord],
    config_hash: str,
    executor,
    inputs: list[str],
    extra: dict | None = None,
) -> dict:
    """Run `make_shard` for every task whose output is not already current, then write the manifest.

    `make_shard` writes the shard's files and returns its record (without config hash, which is
    stamped here); the record is written last so a crash leaves the shard to be redone, never half
    counted. Returns the manifest.
    """
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"{stage}: duplicate shard names")
    pending = [t for t in tasks if not is_done(dataset, t.name, config_hash)]
    done = {t.name for t in tasks} - {t.name for t in pending}

    def run_one(task: ShardTask) -> ShardRecord:
        rec = make_shard(task)
        rec.config_hash = config_hash
        write_record(dataset, rec)
        return rec

    executor.map(run_one, pending, desc=f"{stage} ({len(done)} shards already done)" if done else stage)
    records = [load_record(dataset, name) for name in sorted(names)]
    return write_manifest(dataset, stage, config_hash, inputs, [r for r in records if r], extra)
