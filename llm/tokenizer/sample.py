"""The tokenizer's training sample: chosen on the workers, stratified by source and language, streamed
to the trainer from part files, so neither the driver nor the training worker holds the corpus.

A document belongs to the stratum `<source>/<lang>` (`lang` from language identification; `unknown`
where the column is null or absent, as for sources the langid step skips). Each stratum gets a target
share of `sample_bytes` (`TokenizerConfig.sample_weights`, else its natural share) and so a fraction:
target bytes / available bytes, capped at 1. A document is in the sample when a seeded hash of its id
falls below its stratum's fraction: spread over every shard, the same on every run, one pass, no global
shuffle. `SamplePlan.in_sample` answers that question for any document, so a consumer can pick
documents outside the sample (held-out text) without reading the sample.

Passes, each one executor task per shard, each returning only counts to the driver:
1. (only with `sample_weights`) bytes and documents per stratum: source, lang and the texts' UTF-8
   lengths, one record batch at a time.
2. the sample: chosen texts go to `<scratch>/part-<shard index>.parquet` (one `text` column, row
   groups of about `BATCH_BYTES`), or for SentencePiece to `part-<shard index>.txt`, their training
   lines one per line, the text file `spm_train` reads; the shard's per-stratum read and sampled counts
   come back.
The trainer reads the parts through `SampleTexts`, one row group at a time, or SentencePiece reads the
line files itself (copied to local disk first when they are on S3). The parts are scratch:
the stage deletes them once the model is written (`remove_sample`); the manifest keeps the counts and
the fractions, which is all `in_sample` needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llm import storage
from llm.errors import UserError

UNKNOWN_LANG = "unknown"
LANG_COLUMN = "lang"
# Uncompressed bytes per record batch read from a shard. Arrow's reader holds a few times a batch
# (pages, decoded strings, the batch), so memory follows this, not the shard's or row group's size.
BATCH_BYTES = 1 << 20
PART_SCHEMA = pa.schema([pa.field("text", pa.string(), nullable=False)])


def stratum(source: str, lang: str | None) -> str:
    """The stratum key of a document: `<source>/<lang>`, lang `unknown` when it has none."""
    return f"{source}/{lang or UNKNOWN_LANG}"


def reserved(doc_id: str, seed: int, fraction: float) -> bool:
    """Whether `doc_id` is among the documents reserved for the tokenizer card (held out of the sample):
    a hash with a key of its own ("card:"), independent of the sample's hash of the same id."""
    digest = hashlib.blake2b(f"card:{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def selected(doc_id: str, seed: int, fraction: float) -> bool:
    """Whether the seeded hash of `doc_id` falls below `fraction` (monotone: selected at a fraction
    means selected at every larger one)."""
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


@dataclass
class SamplePlan:
    """Which documents the sample holds: per stratum the fraction chosen by id hash, with `seed`."""

    seed: int
    fractions: dict[str, float]
    targets: dict[str, int] = field(default_factory=dict)  # stratum -> target bytes (for the manifest)
    default: float = 0.0  # the fraction of strata not in `fractions`
    reserved: float = 0.0  # share of documents held out for the tokenizer card (`reserved`), never sampled

    def fraction(self, stratum_key: str) -> float:
        return self.fractions.get(stratum_key, self.default)

    def in_sample(self, doc_id: str, stratum_key: str) -> bool:
        """Whether the document `doc_id` of stratum `stratum_key` (see `stratum`) is in the sample; a
        stratum a recorded plan does not know had no documents, so none of its documents are."""
        if self.reserved and reserved(doc_id, self.seed, self.reserved):
            return False
        return selected(doc_id, self.seed, self.fraction(stratum_key))

    def reserving(self, share: float) -> "SamplePlan":
        """This plan with `share` of the documents held out, its fractions raised so the sample still
        reaches about its targets from the documents left."""
        if not share:
            return self
        scale = 1 / (1 - share)
        return SamplePlan(self.seed, {k: min(1.0, f * scale) for k, f in self.fractions.items()}, self.targets,
                          min(1.0, self.default * scale), share)

    @classmethod
    def from_manifest(cls, sample: dict) -> "SamplePlan":
        """The plan a tokenizer manifest's `sample` section records."""
        return cls(sample["seed"], {k: s["fraction"] for k, s in sample["strata"].items()},
                   reserved=sample.get("reserved_fraction", 0.0))


def _batches(uri: str, columns: list[str]) -> Iterator[tuple[pa.RecordBatch, pa.Array]]:
    """(batch, stratum keys) per record batch of a shard, reading only `columns` plus source and lang."""
    with storage.parquet_file(uri) as pf:
        has_lang = LANG_COLUMN in pf.schema_arrow.names
        wanted = list(dict.fromkeys(columns + ["source"] + ([LANG_COLUMN] if has_lang else [])))
        # Rows per batch follow the bytes per row seen so far (the file's metadata cannot tell: a
        # dictionary-encoded text column stores far fewer bytes than it decodes to).
        rows, seen_rows, seen_bytes = 64, 0, 0
        for group in range(pf.metadata.num_row_groups):
            for batch in pf.iter_batches(batch_size=rows, row_groups=[group], columns=wanted):
                seen_rows, seen_bytes = seen_rows + batch.num_rows, seen_bytes + batch.nbytes
                yield batch, _keys(batch, has_lang)
            rows = max(16, min(65536, BATCH_BYTES * seen_rows // max(seen_bytes, 1)))


def _keys(batch: pa.RecordBatch, has_lang: bool) -> pa.Array:
    lang = batch.column(LANG_COLUMN) if has_lang else pa.nulls(batch.num_rows, pa.string())
    return pc.binary_join_element_wise(batch.column("source"), pc.fill_null(lang, UNKNOWN_LANG), "/")


def _add(totals: dict, keys: pa.Array, nbytes: pa.Array, prefix: str) -> None:
    grouped = pa.table({"k": keys, "b": nbytes}).group_by("k").aggregate([("b", "sum"), ("b", "count")])
    for k, b, n in zip(*(grouped.column(c).to_pylist() for c in ("k", "b_sum", "b_count"))):
        totals[k][f"{prefix}_bytes"] += b or 0
        totals[k][f"{prefix}_documents"] += n


def shard_strata(uri: str) -> dict[str, dict[str, int]]:
    """Available bytes and documents per stratum of one shard (the first pass)."""
    totals: dict = defaultdict(lambda: defaultdict(int))
    for batch, keys in _batches(uri, ["text"]):
        _add(totals, keys, pc.binary_length(batch.column("text")), "available")
    return {k: dict(v) for k, v in totals.items()}


#: The suffix of a part written as SentencePiece's training lines (`line_length`), not as Parquet.
LINES_SUFFIX = ".txt"


def sample_shard(uri: str, part_uri: str, plan: SamplePlan, line_length: int | None = None) -> dict[str, dict[str, int]]:
    """Write the chosen texts of the shard `uri` to `part_uri`; per stratum: read and sampled bytes and
    documents. Memory: one record batch plus the compressed part. With `line_length`, the part is the
    texts' SentencePiece training lines (`llm.tokenizer.spm.training_lines`), one per line of a UTF-8
    text file: what `spm_train` reads, so the trainer reads it in C++ with no Python in between."""
    totals: dict = defaultdict(lambda: defaultdict(int))
    buf = io.BytesIO()
    writer = None if line_length else pq.ParquetWriter(buf, PART_SCHEMA, compression="zstd")
    pending: list[pa.Array] = []  # chosen texts not yet written: a row group of about BATCH_BYTES

    def flush():
        if pending and writer is None:
            from llm.tokenizer.spm import training_lines

            for line in training_lines(pa.concat_arrays(pending).to_pylist(), line_length):
                buf.write(line.encode("utf-8") + b"\n")
        elif pending:
            writer.write_table(pa.table({"text": pa.concat_arrays(pending)}, PART_SCHEMA))
        pending.clear()

    for batch, keys in _batches(uri, ["id", "text"]):
        nbytes = pc.binary_length(batch.column("text"))
        _add(totals, keys, nbytes, "read")
        chosen = pa.array([plan.in_sample(i, k) for i, k in
                           zip(batch.column("id").to_pylist(), keys.to_pylist())], pa.bool_())
        _add(totals, keys.filter(chosen), nbytes.filter(chosen), "sampled")
        if chosen.true_count:
            pending.append(batch.column("text").filter(chosen))
            if sum(a.nbytes for a in pending) >= BATCH_BYTES:
                flush()
    flush()
    if writer is not None:
        writer.close()
    # Scratch: no fsync, but still whole or absent, and the same bytes on every run.
    storage.write_bytes(part_uri, buf.getvalue(), durable=False)
    return {k: dict(v) for k, v in totals.items()}


@dataclass(frozen=True)
class SampleTexts:
    """The sample's texts, part after part, one row group in memory at a time. An iterable (each
    iteration reads the parts again) that pickles as its URIs, so it can travel to a training task."""

    part_uris: tuple[str, ...]

    def __iter__(self) -> Iterator[str]:
        for uri in self.part_uris:
            if uri.endswith(LINES_SUFFIX):  # training lines: each line is one text
                yield from storage.read_text(uri).split("\n")[:-1]
                continue
            with storage.parquet_file(uri) as pf:
                for i in range(pf.num_row_groups):
                    yield from pf.read_row_group(i, columns=["text"]).column("text").to_pylist()

    @property
    def are_lines(self) -> bool:
        """Whether the parts are training-line text files (`sample_shard`'s `line_length`)."""
        return bool(self.part_uris) and all(u.endswith(LINES_SUFFIX) for u in self.part_uris)

    @contextlib.contextmanager
    def local_files(self) -> Iterator[list[str]]:
        """The parts as local paths (S3 parts copied to a temporary folder for the block)."""
        if not any(storage.is_s3(u) for u in self.part_uris):
            yield [str(storage.local_path(u)) for u in self.part_uris]
            return
        with tempfile.TemporaryDirectory(prefix="llmpipe-sample-") as tmp:
            paths = []
            for i, uri in enumerate(self.part_uris):
                path = os.path.join(tmp, f"part-{i:05d}{LINES_SUFFIX}")
                with open(path, "wb") as fh:
                    fh.write(storage.read_bytes(uri))
                paths.append(path)
            yield paths


def plan_sample(available: dict[str, int], sample_bytes: int, weights: dict[str, float], seed: int) -> SamplePlan:
    """Per-stratum targets and fractions for `sample_bytes` of sample from `available` bytes per stratum.

    Each stratum is claimed by its most specific key in `weights` (`source/lang`, then `source`, then
    `*/lang`); a key's share of `sample_bytes` is split over the strata it claims in proportion to their
    bytes, so they all get one fraction. Unclaimed strata share what the keys leave, the same way. When
    nothing is unclaimed, the keys' shares are scaled to sum to 1, so the sample is `sample_bytes` where
    the data allows. A stratum smaller than its target is taken whole (fraction 1)."""
    groups: dict[str | None, list[str]] = defaultdict(list)
    for key in sorted(available):
        source, lang = key.split("/", 1)
        claim = next((k for k in (key, source, f"*/{lang}") if k in weights), None)
        groups[claim].append(key)
    idle = sorted(k for k in weights if not sum(available[s] for s in groups.get(k, ())))
    if idle:
        raise UserError(f"tokenizer.sample_weights: {', '.join(repr(k) for k in idle)} match no text of "
                        f"their own (a more specific key may claim it all); the shards' strata are "
                        f"{', '.join(sorted(available))}")
    free = sum(available[s] for s in groups.get(None, ()))
    listed = sum(weights.values())
    shares = {k: w / listed for k, w in weights.items()} if not free and listed else dict(weights)
    if free:
        shares[None] = max(0.0, 1.0 - listed)
    if not any(shares.values()):
        raise UserError("tokenizer.sample_weights leave every stratum at 0: nothing to train on")
    fractions, targets = {}, {}
    for claim, members in groups.items():
        group_bytes = sum(available[s] for s in members)
        group_target = shares[claim] * sample_bytes
        fraction = min(1.0, group_target / group_bytes) if group_bytes else 0.0
        for s in members:
            fractions[s] = fraction
            targets[s] = round(group_target * available[s] / group_bytes) if group_bytes else 0
    return SamplePlan(seed, fractions, targets)


def _merge(parts: Iterable[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    totals: dict = defaultdict(lambda: defaultdict(int))
    for part in parts:
        for k, counts in part.items():
            for name, n in counts.items():
                totals[k][name] += n
    return {k: dict(totals[k]) for k in sorted(totals)}


def build_sample(shard_uris: list[str], scratch_uri: str, sample_bytes: int, weights: dict[str, float],
                 seed: int, executor, known_total: int | None = None, reserve: float = 0.0,
                 line_length: int | None = None) -> tuple[list[str], dict]:
    """Sample the shards into part files under `scratch_uri`; returns (part URIs, the manifest's
    `sample` section). `known_total` (the shards' text bytes from their manifest) spares the first
    pass when there are no weights: every stratum then has the same fraction. `reserve`: the share of
    documents held out of the sample for the tokenizer card (`reserved`). `line_length`: parts as
    SentencePiece training lines cut at that length (`sample_shard`)."""
    if weights or known_total is None:
        strata = _merge(executor.map(shard_strata, shard_uris, desc="tokenizer: sample sizes"))
        available = {k: v["available_bytes"] for k, v in strata.items()}
        total = sum(available.values())
    else:
        total = known_total
    if not total:
        raise UserError("tokenizer: the shards hold no text to train on")
    if weights:
        plan = plan_sample(available, sample_bytes, weights, seed)
    else:  # one fraction for every stratum: only the total matters
        plan = SamplePlan(seed, {}, default=min(1.0, sample_bytes / total))
    plan = plan.reserving(reserve)
    suffix = LINES_SUFFIX if line_length else ".parquet"
    parts = [storage.join(scratch_uri, f"part-{i:05d}{suffix}") for i in range(len(shard_uris))]
    counts = _merge(executor.map(lambda job: sample_shard(job[0], job[1], plan, line_length), list(zip(shard_uris, parts)),
                                 desc="tokenizer: sample"))
    return parts, _section(plan, counts, sample_bytes, weights)


def _section(plan: SamplePlan, counts: dict, sample_bytes: int, weights: dict[str, float]) -> dict:
    """The manifest's `sample` section: sampled documents and bytes, `fraction` (sampled / available
    bytes), the request, and per stratum its fraction, available, target and sampled bytes and
    documents (available = sampled + not sampled, counted in the same pass)."""
    strata = {}
    read_total = sum(c["read_bytes"] for c in counts.values())
    for k, c in counts.items():
        # The fraction exactly as used (not rounded), so `SamplePlan.from_manifest` picks the same documents.
        fraction = plan.fraction(k)
        target = plan.targets.get(k, round(sample_bytes * c["read_bytes"] / read_total) if read_total else 0)
        strata[k] = {"fraction": fraction, "available_bytes": c["read_bytes"],
                     "available_documents": c["read_documents"], "target_bytes": target,
                     "sampled_bytes": c.get("sampled_bytes", 0), "sampled_documents": c.get("sampled_documents", 0)}
    read = sum(s["available_bytes"] for s in strata.values())
    sampled = sum(s["sampled_bytes"] for s in strata.values())
    return {"documents": sum(s["sampled_documents"] for s in strata.values()), "bytes": sampled,
            "fraction": round(sampled / read, 6) if read else 0.0, "sample_bytes": sample_bytes,
            "weights": dict(weights), "seed": plan.seed, "reserved_fraction": plan.reserved, "strata": strata}


def remove_sample(scratch_uri: str) -> None:
    """Delete the sample's part files (after training), and their parent folder when nothing else is
    in it."""
    storage.delete(scratch_uri)
    parent = scratch_uri.rstrip("/").rsplit("/", 1)[0]
    if not storage.list_files(parent):
        storage.delete(parent)
