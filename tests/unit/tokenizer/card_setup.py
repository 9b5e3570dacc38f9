"""A document dataset of the development data's multilingual texts (13 languages, two sources per
language family of the fortune files) with the `lang` column the language ID step adds."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from llm.data import schema
from llm.data.dataset import Counts, load_record, write_manifest, write_record, write_shard

LANG_SCHEMA = pa.schema(schema.DOC_FIELDS + [pa.field("lang", pa.string())])


def langid_records(shared_data: Path) -> list[dict]:
    """The language-ID development records, distinct by text."""
    records = [json.loads(line) for line in (shared_data / "langid_dev.jsonl").open(encoding="utf-8")]
    return list({r["text"]: r for r in records}.values())


def write_lang_dataset(uri: str, records: list[dict], shards: int) -> list[dict]:
    """Write `records` as `shards` shards (id, text, source, lang); returns the rows written."""
    rows = [{"id": schema.doc_id("card", i), "text": r["text"], "source": r["source"], "url": None,
             "created": None, "meta": "{}", "lang": r["label"]} for i, r in enumerate(records)]
    per = -(-len(rows) // shards)
    names = []
    for s in range(shards):
        part = rows[s * per:(s + 1) * per]
        name = f"in-{s:05d}"
        rec = write_shard(uri, name, [name], pa.Table.from_pylist(part, LANG_SCHEMA),
                          schema.reject_schema(LANG_SCHEMA).empty_table(), schema.QUARANTINE_SCHEMA.empty_table(),
                          Counts(len(part), len(part)))
        write_record(uri, rec)
        names.append(name)
    write_manifest(uri, "fixture", [load_record(uri, n) for n in names])
    return rows
