"""A planted near-duplicate corpus from the development data, written as a document dataset, with its
brute-force ground truth."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm import storage
from llm.data import schema
from llm.data.dataset import Counts, load_record, write_manifest, write_record
from llm.data.dataset import write_shard
from llm.data.minhash.planted import planted_corpus, similar_pairs, word_pool
from llm.data.minhash.shingles import word_shingles


def write_dataset(uri: str, texts: list[str], shards: int, urls: list[str | None] | None = None,
                  created: list[str | None] | None = None, tag: str = "p") -> list[str]:
    """Write `texts` as a document dataset of `shards` shards; returns the document ids in order."""
    ids = [schema.doc_id(tag, i) for i in range(len(texts))]
    per = -(-len(texts) // shards)
    names = []
    for s in range(shards):
        lo, hi = s * per, min(len(texts), (s + 1) * per)
        rows = [{"id": ids[i], "text": texts[i], "source": "test", "url": urls[i] if urls else None,
                 "created": created[i] if created else None, "meta": "{}"} for i in range(lo, hi)]
        table = pa.Table.from_pylist(rows, schema.DOC_SCHEMA)
        name = f"in-{s:05d}"
        rec = write_shard(uri, name, [name], table, schema.reject_schema(schema.DOC_SCHEMA).empty_table(),
                          schema.QUARANTINE_SCHEMA.empty_table(), Counts(len(rows), len(rows)))
        write_record(uri, rec)
        names.append(name)
    write_manifest(uri, "fixture", [load_record(uri, n) for n in names])
    return ids


def rejected(out_uri: str) -> list[dict]:
    files = storage.list_files(storage.join(out_uri, "rejected"), ".parquet")
    return [r for f in files for r in pq.read_table(f).to_pylist()]


@dataclass
class Planted:
    texts: list[str]
    family: list[int]
    kind: list[str]
    truth: dict[tuple[int, int], float]  # every pair with exact Jaccard >= 0.3

    def jaccard(self, i: int, j: int) -> float:
        return self.truth.get((min(i, j), max(i, j)), 0.0)


@pytest.fixture(scope="session")
def words(shared_data) -> list[str]:
    return word_pool(shared_data)


@pytest.fixture(scope="session")
def planted(words) -> Planted:
    corpus = planted_corpus(words, 1500, seed=7)
    truth = similar_pairs(word_shingles(corpus.texts, 5), 0.3)
    return Planted(corpus.texts, corpus.family, corpus.kind, truth)


def removals(out_uri: str, ids: list[str]) -> dict[int, tuple[int, dict]]:
    """Removed document -> (keeper, rejected row) by corpus position."""
    pos = {d: i for i, d in enumerate(ids)}
    return {pos[r["id"]]: (pos[json.loads(r["detail"])["keeper"]], r) for r in rejected(out_uri)}
