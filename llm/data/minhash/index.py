"""The signature index a MinHash run leaves beside its output, so a later batch is deduplicated
against it without recomputing anything (a nightly refresh).

`<out>/_index/<shard>.npz` holds, for the shard's kept documents, their signatures, band hashes and
ids; `<out>/_index/_meta.json` the settings they were made with and the index the run itself was
checked against (`parent`), so a chain of refreshes is one index. Index documents get negative global
numbers (-1, -2, ...) and rank before every new document: they stay, new copies of them go.
"""

from __future__ import annotations

import json

import numpy as np

from llm import storage
from llm.data.dataset import dumps
from llm.data.minhash import partitions
from llm.data.minhash.lsh import bucket_of

INDEX = "_index"
META = "_meta.json"


def _settings(plan) -> dict:
    cfg = plan.cfg
    return {"bands": plan.bands, "rows": plan.rows, "seed": cfg.seed, "shingle": cfg.shingle, "ngram": cfg.ngram}


def write_shard_index(plan, s: int, gone: np.ndarray, ids: list[str]) -> str:
    """Index file of shard s's kept documents; returns its path relative to the output."""
    name = plan.names[s]
    sig = partitions.get(plan.file("sig", s))
    keep = ~gone & sig["has"]
    rel = f"{INDEX}/{name}.npz"
    partitions.save(storage.join(plan.out_uri, rel), sig=sig["sig"][keep], bands=sig["bands"][keep],
                    id=np.array([i for i, k in zip(ids, keep.tolist()) if k], dtype=str))
    return rel


def write_meta(plan, config_hash: str) -> None:
    shards = []
    for name in plan.names:
        uri = storage.join(plan.out_uri, INDEX, f"{name}.npz")
        if storage.exists(uri):
            shards.append({"file": f"{name}.npz", "docs": int(len(partitions.load(uri)["id"]))})
    meta = {**_settings(plan), "config_hash": config_hash, "shards": shards, "parent": plan.cfg.index_uri}
    storage.write_text(storage.join(plan.out_uri, INDEX, META), dumps(meta))


class Index:
    """The index files of an earlier run (and of the runs it was checked against)."""

    def __init__(self, files: list[str], docs: list[int], plan):
        self.files, self.plan = files, plan
        # Document k of the concatenated index has global number -1 - k.
        self.starts = np.r_[0, np.cumsum(docs)].astype(np.int64)

    @classmethod
    def open(cls, uri: str, plan) -> "Index":
        files, docs, seen = [], [], set()
        while uri and uri not in seen:
            seen.add(uri)
            meta_uri = storage.join(uri, INDEX, META)
            if not storage.exists(meta_uri):
                raise FileNotFoundError(f"data.minhash.index_uri: {uri} has no {INDEX}/{META}; "
                                        f"point it at the output of an earlier MinHash run")
            meta = json.loads(storage.read_text(meta_uri))
            wanted = _settings(plan)
            if {k: meta.get(k) for k in wanted} != wanted:
                raise ValueError(f"data.minhash.index_uri: {uri} was made with "
                                 f"{ {k: meta.get(k) for k in wanted} }, this run uses {wanted}")
            files += [storage.join(uri, INDEX, s["file"]) for s in meta["shards"]]
            docs += [s["docs"] for s in meta["shards"]]
            uri = meta.get("parent")
        return cls(files, docs, plan)

    def _locate(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = -1 - docs
        f = np.searchsorted(self.starts, k, side="right") - 1
        return f, k - self.starts[f]

    def partition(self, executor) -> list[str]:
        """Route the index's band hashes into this run's buckets; returns the folder to read them from."""
        plan, folder = self.plan, self.plan.folder("index_bands")

        def route(f: int) -> None:
            data = partitions.load(self.files[f])
            bh = data["bands"]
            doc = -1 - (self.starts[f] + np.arange(len(bh), dtype=np.int64))
            rows, bands = np.nonzero(np.ones(bh.shape, bool))
            h = bh[rows, bands]
            partitions.write_partitioned(folder, f"{f:05d}", bucket_of(h, plan.partitions), plan.partitions,
                                         band=bands.astype(np.int32), hash=h, doc=doc[rows],
                                         prio=np.full(len(h), -np.inf))

        executor.map(route, list(range(len(self.files))), desc="minhash: index")
        return [folder]

    def _gather(self, docs: np.ndarray, key: str) -> np.ndarray:
        f, row = self._locate(docs)
        out = None
        for fi in np.unique(f).tolist():
            sel = f == fi
            values = partitions.load(self.files[fi])[key][row[sel]]
            if out is None:
                out = np.empty((len(docs),) + values.shape[1:], dtype=values.dtype)
            out[sel] = values
        return out if out is not None else np.zeros(0)

    def signatures(self, docs: np.ndarray) -> np.ndarray:
        return self._gather(docs, "sig")

    def ids(self, docs: np.ndarray) -> list[str]:
        return self._gather(docs, "id").tolist()
