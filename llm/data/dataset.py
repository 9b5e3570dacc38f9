"""Datasets: a folder of Parquet shards plus `_manifest.json`, and the resumable shard-stage runner.

Layout of a dataset folder written by a stage:

    <key>.parquet               kept documents (one file per output shard)
    rejected/<key>.parquet      dropped documents with stage, rule, value, threshold, detail
    quarantine/<key>.parquet    bad input with its error
    _shards/<key>.json          per-shard record, written last: the shard's commit marker
    _versions/<version>.json    every shard record plus totals, written when all shards are done
    _manifest.json              the current version (see `llm.versions`)

Shard files are named by the shard's key (`<key>.parquet`, `rejected/<key>.parquet`, ...): the digest
of the stage's code, config and exactly what the shard reads. A shard whose key was made before is not
made again, so a killed run resumes where it stopped and a new version reuses every unchanged shard.
Nothing time- or host-dependent goes into records, so two runs over the same input give
byte-identical files.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from llm import storage, versions
from llm.config import stable_hash
from llm.lineage import Identity

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
    """What one output shard holds and how it was made. `key` is the shard's identity (see
    `llm.lineage.Identity.shard_key`) and names its files; `name` is what it is called in lineage."""

    name: str
    inputs: list[str]
    rows: int
    bytes: int
    sha256: str
    counts: Counts
    steps: dict[str, Counts] = field(default_factory=dict)  # per fused step, in order
    files: dict[str, str] = field(default_factory=dict)  # role -> path relative to the dataset
    extra: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    code: str = ""  # the stage's code digest
    config_hash: str = ""

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
        data.pop("code_version", None)  # written by releases that stamped a package version
        return cls(**data)


def dumps(data: Any) -> str:
    """Canonical JSON used for every record and manifest (sorted keys, stable floats)."""
    return json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def record_uri(dataset: str, key: str) -> str:
    return storage.join(versions.split(dataset)[0], SHARD_RECORDS, f"{key}.json")


def load_record(dataset: str, key: str) -> ShardRecord | None:
    uri = record_uri(dataset, key)
    if not storage.exists(uri):
        return None
    return ShardRecord.from_json(json.loads(storage.read_text(uri)))


def write_record(dataset: str, record: ShardRecord) -> None:
    storage.write_text(record_uri(dataset, record.key or record.name), dumps(record.to_json()))


def done_record(dataset: str, key: str) -> ShardRecord | None:
    """The record of the shard with this key when it and all its files exist (the shard is made)."""
    rec = load_record(dataset, key)
    if rec is None or rec.key != key:
        return None
    if all(storage.exists(storage.join(dataset, rel)) for rel in rec.files.values()):
        return rec
    return None


def read_manifest(dataset: str) -> dict:
    """The manifest of a dataset's current version, or of `dataset@version`."""
    return versions.read(dataset)


def shard_files(dataset: str, role: str = "data") -> list[str]:
    """URIs of the dataset's files of one role (data, rejected, quarantine, ...) in shard order."""
    manifest = read_manifest(dataset)
    root = versions.split(dataset)[0]
    return [storage.join(root, s["files"][role]) for s in manifest["shards"] if role in s["files"]]


def build_manifest(stage: str, records: Iterable[ShardRecord], extra: dict | None = None) -> dict:
    """Shard records (in the order given: input order, which keeper rules follow) and totals."""
    records = list(records)
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
    return manifest


def write_manifest(dataset: str, stage: str, records: Iterable[ShardRecord], extra: dict | None = None) -> dict:
    """Write a dataset made outside a stage (an import, a test fixture) as one version of itself: its
    version is the digest of its content."""
    manifest = build_manifest(stage, records, extra)
    manifest["version"] = stable_hash(manifest)
    storage.write_text(versions.version_file(dataset, manifest["version"]), dumps(manifest))
    storage.write_text(storage.join(dataset, MANIFEST), dumps(manifest))
    return manifest


def writer_config(shard_cfg) -> dict:
    """The part of `data.shard` that shapes every document stage's files (not the final cut size)."""
    return {"row_group_rows": shard_cfg.row_group_rows, "compression": shard_cfg.compression}


def shard_identity(shard: dict) -> str:
    """What identifies an input shard's content for the keys of shards made from it: its key (a shard
    made by a stage), else the digest of its data file (a dataset written some other way)."""
    return shard.get("key") or shard["sha256"]


def write_table(dataset: str, rel: str, table: pa.Table, row_group_rows: int = 1024,
                compression: str = "zstd") -> tuple[int, str]:
    return storage.write_parquet(storage.join(dataset, rel), table, row_group_rows, compression)


@dataclass(frozen=True)
class ShardTask:
    """One unit of a shard stage: the output shard's name, what it reads, whatever the stage needs to
    make it, and its key when the planner knows it (else the stage's `key_of` finds it in the task)."""

    name: str
    inputs: tuple[str, ...]
    payload: Any = None
    key: str | None = None


def run_shard_stage(
    ident: Identity,
    dataset: str,
    tasks: list[ShardTask],
    make_shard: Callable[[ShardTask], ShardRecord],
    executor,
    parents: dict[str, str],
    started: float,
    extra: dict | None = None,
    key_of: Callable[[ShardTask], str] | None = None,
    extend: Callable[[dict], dict] | None = None,
) -> dict:
    """Make every shard whose key no earlier run made, then publish the version.

    Tasks with a key are skipped in the driver when their shard exists; the others run and find their
    key first (`key_of`: for shards whose key depends on cross-shard decisions), returning the existing
    record when it is made already. `make_shard` gets the task with its key set, writes the shard's files
    named by it and returns the record; the record is written last, so a crash leaves the shard to be
    redone, never half counted. The manifest lists shards in task order; `extend` adds what is
    computed from all records (a token dataset's split lists) before the version is published.
    """
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"{ident.stage}: duplicate shard names")
    if key_of is None and any(t.key is None for t in tasks):
        raise ValueError(f"{ident.stage}: tasks without a key need key_of")
    made = {t.name: rec for t in tasks if t.key and (rec := done_record(dataset, t.key)) is not None}
    pending = [t for t in tasks if t.name not in made]

    def run_one(task: ShardTask) -> tuple[ShardRecord, bool]:
        key = task.key or key_of(task)
        existing = done_record(dataset, key)
        if existing is not None:
            return existing, True
        rec = make_shard(replace(task, key=key))
        rec.key, rec.code, rec.config_hash = key, ident.code, ident.config_hash
        write_record(dataset, rec)
        return rec, False

    reused = len(made)
    results = executor.map(run_one, pending,
                           desc=f"{ident.stage} ({reused} shards reused)" if reused else ident.stage)
    made.update((t.name, rec) for t, (rec, _) in zip(pending, results))
    reused += sum(was for _, was in results)
    manifest = build_manifest(ident.stage, [made[t.name] for t in tasks], extra)
    if extend is not None:
        manifest = extend(manifest)
    return versions.publish(dataset, ident, manifest, parents, started,
                            {"shards_reused": reused, "shards_made": len(tasks) - reused})


def write_shard(dataset: str, name: str, inputs: list[str], kept: pa.Table, rejected: pa.Table,
                quarantined: pa.Table, counts: Counts, steps: dict[str, Counts] | None = None,
                row_group_rows: int = 1024, compression: str = "zstd", extra: dict | None = None,
                key: str | None = None) -> ShardRecord:
    """Write a shard's kept/rejected/quarantine files, named by its key, and return its record (shared
    by all document stages)."""
    stem = key or name
    files = {"data": f"{stem}.parquet"}
    nbytes, sha = write_table(dataset, files["data"], kept, row_group_rows, compression)
    if rejected.num_rows:
        files["rejected"] = f"rejected/{stem}.parquet"
        write_table(dataset, files["rejected"], rejected, row_group_rows, compression)
    if quarantined.num_rows:
        files["quarantine"] = f"quarantine/{stem}.parquet"
        write_table(dataset, files["quarantine"], quarantined, row_group_rows, compression)
    text_bytes = (pc.sum(pc.binary_length(kept.column("text"))).as_py() or 0) if kept.num_rows else 0
    counts.check(f"{dataset}/{name}")
    return ShardRecord(
        name=name, inputs=list(inputs), rows=kept.num_rows, bytes=nbytes, sha256=sha, counts=counts,
        steps=steps or {}, files=files, extra={"text_bytes": text_bytes, **(extra or {})}, key=key or "",
    )
