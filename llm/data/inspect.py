"""Decisions a person can inspect: why one document was kept or dropped, and what a dataset lost where.

`explain` finds a document by id in a dataset's kept, rejected or quarantine shards and walks the steps
recorded in the manifest; `stats` tabulates drops per step and rule and documents per language.
"""

from __future__ import annotations

import math
from collections import Counter

import pyarrow.compute as pc

from llm import storage
from llm.data.dataset import read_manifest
from llm.data.schema import DOC_FIELDS, REJECT_FIELDS
from llm.errors import InputNotFound

_DOC_COLUMNS = {f.name for f in DOC_FIELDS} | {f.name for f in REJECT_FIELDS}
_PREFIX_STEP = {"lang": "langid", "rep_": "quality", "gopher_": "quality", "c4_": "quality", "fw_": "quality",
                "content_": "content", "pii_": "pii"}


def find_document(dataset: str, doc_id: str) -> tuple[str, dict] | None:
    """(role, row) of the document: role is data, rejected or quarantine; None when absent."""
    manifest = read_manifest(dataset)
    for role in ("data", "rejected", "quarantine"):
        for shard in manifest["shards"]:
            rel = shard["files"].get(role)
            if not rel:
                continue
            row = find_in_shard(storage.join(dataset, rel), doc_id)
            if row is not None:
                return role, row
    return None


def find_in_shard(uri: str, doc_id: str) -> dict | None:
    """The row with this id in one Parquet shard, or None. Reads the footer, skips the row groups whose
    `id` statistics exclude the id, reads only the `id` column of the others, and all columns of the
    one row group that holds it: a lookup touches a small part of a shard of long documents."""
    with storage.parquet_file(uri) as pf:
        meta = pf.metadata
        if meta.num_row_groups == 0 or "id" not in pf.schema_arrow.names:
            return None
        leaf = next(j for j in range(meta.num_columns) if meta.row_group(0).column(j).path_in_schema == "id")
        for rg in range(meta.num_row_groups):
            st = meta.row_group(rg).column(leaf).statistics
            if st is not None and st.has_min_max and isinstance(st.min, str) and not st.min <= doc_id <= st.max:
                continue
            ids = pf.read_row_group(rg, columns=["id"]).column("id")
            idx = pc.index(ids, doc_id).as_py()
            if idx >= 0:
                return pf.read_row_group(rg).slice(idx, 1).to_pylist()[0]
    return None


def _step_of(column: str) -> str | None:
    for prefix, step in _PREFIX_STEP.items():
        if column.startswith(prefix):
            return step
    return None


def explain(dataset: str, doc_id: str) -> str:
    """Text report: the document's fate at each step, with the signals it was judged on."""
    manifest = read_manifest(dataset)
    found = find_document(dataset, doc_id)
    if found is None:
        raise InputNotFound(f"{dataset}: no document with id {doc_id!r} in its kept, rejected or quarantine shards")
    role, row = found
    steps = manifest.get("step_order") or [s for s in manifest.get("totals", {}).get("steps", {}) if s != "read"]
    rules = manifest.get("rules", {})
    lines = [f"document {doc_id} in {dataset}"]
    if role == "quarantine":
        lines += [f"  source {row['source']}  location {row['location']}",
                  f"  QUARANTINED at {row['stage']}: {row['error']}"]
        return "\n".join(lines)
    lines.append(f"  source {row['source']}  url {row.get('url') or '-'}  chars {len(row['text'])}")
    stopped = row.get("stage") if role == "rejected" else None
    reached = True
    for step in steps:
        if not reached:
            lines.append(f"  {step:<10} not reached")
            continue
        signals = {k: v for k, v in row.items() if k not in _DOC_COLUMNS and _step_of(k) == step}
        if step == stopped:
            lines.append(f"  {step:<10} DROPPED by {row['rule']}: value {_fmt(row['value'])} "
                         f"threshold {_fmt(row['threshold'])}" + (f" ({row['detail']})" if row.get("detail") else ""))
            reached = False
        elif signals and all(v is None for v in signals.values()):
            lines.append(f"  {step:<10} kept (does not apply to source {row['source']!r})")
            continue
        else:
            lines.append(f"  {step:<10} kept")
        for name, value in signals.items():
            bounds = []
            for r in rules.get(step, []):
                if r["signal"] == name:
                    fails = isinstance(value, (int, float)) and (
                        value < r["threshold"] if r["kind"] == "min" else value > r["threshold"])
                    bounds.append(f"{r['kind']} {_fmt(r['threshold'])}" + (" FAILS" if fails else ""))
            lines.append(f"      {name:<28} {_fmt(value):<10}" + (f" ({', '.join(bounds)})" if bounds else ""))
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def stats(dataset: str) -> dict:
    """{"steps": {step: {"read", "kept", "quarantined", "dropped": {rule: n}}}, "languages": {"kept": {lang: n},
    "dropped": {lang: n}}} for a dataset written by the ingest pass; for one written by near-duplicate
    removal also "minhash": its run statistics (S-curve, pairs, cluster sizes) and removal rate."""
    manifest = read_manifest(dataset)
    steps = manifest.get("totals", {}).get("steps", {})
    languages = {"kept": Counter(), "dropped": Counter()}
    for role, key in (("data", "kept"), ("rejected", "dropped")):
        for shard in manifest["shards"]:
            rel = shard["files"].get(role)
            if not rel:
                continue
            uri = storage.join(dataset, rel)
            if "lang" not in _columns(uri):
                continue
            col = storage.read_parquet(uri, columns=["lang"]).column("lang")
            languages[key].update(v if v is not None else "(not identified)" for v in col.to_pylist())
    out = {"steps": steps, "languages": {k: dict(v.most_common()) for k, v in languages.items()}}
    if manifest.get("minhash"):  # a near-duplicate removal's run statistics
        counts = manifest["totals"]["counts"]
        removed = sum(counts["dropped"].values())
        out["minhash"] = {**manifest["minhash"], "removal_rate": removed / counts["read"] if counts["read"] else 0.0}
    return out


def _columns(uri: str) -> list[str]:
    with storage.parquet_file(uri) as pf:  # the footer only
        return pf.schema_arrow.names


def format_stats(data: dict) -> str:
    """The tables of `stats` as text (and a near-duplicate removal's statistics when it has them)."""
    lines = [f"{'step':<14} {'rule':<28} {'dropped':>8}"]
    for step, counts in data["steps"].items():
        if not counts["dropped"] and step != "read":
            lines.append(f"{step:<14} {'(none)':<28} {0:>8}   read {counts['read']} kept {counts['kept']}")
        for rule, n in sorted(counts["dropped"].items(), key=lambda kv: -kv[1]):
            lines.append(f"{step:<14} {rule:<28} {n:>8}")
    lines += ["", f"{'language':<18} {'kept':>8} {'dropped':>8}"]
    langs = data["languages"]
    for lang in sorted(set(langs["kept"]) | set(langs["dropped"]), key=lambda l: -langs["kept"].get(l, 0)):
        lines.append(f"{lang:<18} {langs['kept'].get(lang, 0):>8} {langs['dropped'].get(lang, 0):>8}")
    if "minhash" in data:
        lines += [""] + _format_minhash(data["minhash"])
    return "\n".join(lines)


def _format_minhash(m: dict) -> list[str]:
    lines = [f"near-duplicates: removal rate {m['removal_rate']:.2%}, {m.get('url_duplicates', 0)} URL duplicates, "
             f"{m.get('candidate_pairs', 0)} candidate pairs, {m.get('verified_pairs', 0)} verified",
             f"LSH {m['bands']} bands x {m['rows']} rows; P(candidate | Jaccard): "
             + "  ".join(f"{s}: {p:.3f}" for s, p in m["s_curve"].items())]
    sizes = m.get("cluster_size_hist", {})
    if sizes:
        lines += ["", f"{'cluster size':<14} {'clusters':>8}"]
        lines += [f"{size:<14} {n:>8}" for size, n in sizes.items()]
    return lines
