"""Document datasets for the sample tests: the language-ID development texts (13 languages) under
several sources, with a `lang` column that is null where a source skipped language identification."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa

from llm.data import schema
from llm.data.dataset import Counts, load_record, write_manifest, write_record, write_shard

LANG_SCHEMA = pa.schema(list(schema.DOC_SCHEMA) + [pa.field("lang", pa.string())])


def dev_texts(shared_data: Path) -> list[tuple[str, str]]:
    """(language, text) of every development text."""
    with (shared_data / "langid_dev.jsonl").open(encoding="utf-8") as fh:
        return [(r["label"], r["text"]) for r in map(json.loads, fh)]


def write_docs(uri: str, rows: list[dict], shards: int) -> list[str]:
    """Write `rows` (id, text, source, lang) as a dataset of `shards` shards, round robin; the shard
    files' URIs in order."""
    names = []
    for s in range(shards):
        part = [{"url": None, "created": None, "meta": "{}", **r} for r in rows[s::shards]]
        names.append(_write(uri, f"in-{s:05d}", pa.Table.from_pylist(part, LANG_SCHEMA)))
    write_manifest(uri, "fixture", [load_record(uri, n) for n in names])
    return [f"{uri}/{load_record(uri, n).files['data']}" for n in names]


def _write(uri: str, name: str, table: pa.Table) -> str:
    rec = write_shard(uri, name, [name], table, schema.reject_schema(LANG_SCHEMA).empty_table(),
                      schema.QUARANTINE_SCHEMA.empty_table(), Counts(table.num_rows, table.num_rows))
    write_record(uri, rec)
    return name


def two_source_rows(shared_data: Path, copies: int) -> list[dict]:
    """`copies` of every development text under `web` (language known) and under `books` (lang null),
    each copy its own document (the copy number appended, so every text is distinct)."""
    rows = []
    for c in range(copies):
        for i, (lang, text) in enumerate(dev_texts(shared_data)):
            for source, doc_lang in (("web", lang), ("books", None)):
                rows.append({"id": schema.doc_id(source, c, i), "text": f"{text} #{c}", "source": source,
                             "lang": doc_lang})
    return rows


def write_big_corpus(uri: str, shared_data: Path, total_bytes: int, shards: int, doc_bytes: int = 4096,
                     seed: int = 0) -> tuple[list[str], int]:
    """About `total_bytes` of documents of about `doc_bytes` each in `shards` shards (files, text
    bytes): 100 documents per language (5 MB in all, too many for Parquet's dictionary encoding, as
    for real text), each development texts of that language strung together, repeated under distinct ids, under `web` and `code` alternately. Columns are built by Arrow (take), not
    from Python rows, so 150 MB is written in a few seconds."""
    rng = random.Random(seed)
    by_lang: dict[str, list[str]] = {}
    for lang, text in dev_texts(shared_data):
        by_lang.setdefault(lang, []).append(text)
    pool, pool_langs = [], []
    for lang in sorted(by_lang):
        for _ in range(100):
            parts: list[str] = []
            while sum(len(p.encode()) + 1 for p in parts) < doc_bytes:
                parts.append(rng.choice(by_lang[lang]))
            pool.append("\n".join(parts))
            pool_langs.append(lang)
    pool_text, pool_lang = pa.array(pool, pa.string()), pa.array(pool_langs, pa.string())
    sizes = [len(t.encode()) for t in pool]
    per_shard = -(-total_bytes * len(pool) // sum(sizes)) // shards  # documents per shard
    names, size = [], 0
    for s in range(shards):
        picks = pa.array([(s * per_shard + i) * 7 % len(pool) for i in range(per_shard)], pa.int64())
        n = [s * per_shard + i for i in range(per_shard)]
        table = pa.table({
            "id": pa.array([schema.doc_id("big", i) for i in n], pa.string()),
            "text": pool_text.take(picks),
            "source": pa.array([("web", "code")[i % 2] for i in n], pa.string()),
            "url": pa.nulls(per_shard, pa.string()), "created": pa.nulls(per_shard, pa.string()),
            "meta": pa.array(["{}"] * per_shard, pa.string()), "lang": pool_lang.take(picks),
        }, LANG_SCHEMA)
        size += sum(sizes[p] for p in picks.to_pylist())
        names.append(_write(uri, f"in-{s:05d}", table))
    write_manifest(uri, "fixture", [load_record(uri, n) for n in names])
    return [f"{uri}/{load_record(uri, n).files['data']}" for n in names], size
