"""The signature index a MinHash run leaves beside its output, so a later batch is deduplicated
against it without recomputing anything (a nightly refresh).

`<out>/_index/<shard>.npz` holds, for the shard's kept documents, their band hashes, ids and rows in
the shard's data file (whole signatures are made again from the text for the few candidates that need
them); `<out>/_index/_meta.json` the settings they were made with and the
index the run itself was checked against (`parent`), so a chain of refreshes is one index. Index
documents get negative global numbers (-1, -2, ...) and rank before every new document: they stay, new
copies of them go. An index document that is a candidate is re-shingled from its text in the earlier
output (only those, never the whole index), so refreshes are verified as the run itself is.
"""

from __future__ import annotations

import json

import numpy as np

from llm import storage
from llm.data.dataset import dumps
from llm.data.minhash import partitions
from llm.data.minhash.lsh import bucket_of
from llm.errors import InputNotFound, UserError

INDEX = "_index"
META = "_meta.json"


# Changes whenever shingle or signature hashing changes: an index made otherwise cannot be matched.
HASH_VERSION = 2


def _settings(plan) -> dict:
    cfg = plan.cfg
    return {"bands": plan.bands, "rows": plan.rows, "seed": cfg.seed, "shingle": cfg.shingle, "ngram": cfg.ngram,
            "hash_version": HASH_VERSION}


def write_shard_index(plan, s: int, gone: np.ndarray, ids: list[str], key: str) -> tuple[str, int]:
    """Index file of shard s's kept documents, named by the output shard's key; returns its path
    relative to the output and its size."""
    sig = partitions.get(plan.file("sig", s))
    keep = ~gone & sig["has"]
    data_row = np.cumsum(~gone) - 1  # row of each kept document in the shard's data file
    rel = f"{INDEX}/{key}.npz"
    partitions.save(storage.join(plan.out_uri, rel), bands=sig["bands"][keep],
                    id=np.array([i for i, k in zip(ids, keep.tolist()) if k], dtype=str), row=data_row[keep])
    return rel, int(keep.sum())


def write_meta(plan, version: str, manifest: dict) -> str:
    """The index's settings and shards, from the output manifest's records (no index file is read), as
    `_index/<version>.meta.json` (what that version's index is) and `_index/_meta.json` (the current
    one, which a later refresh's `index_uri` reads). Returns the first's path relative to the output."""
    shards = [{"file": rec["files"]["index"].split("/")[-1], "docs": rec["extra"]["index_docs"],
               "data": rec["files"]["data"]} for rec in manifest["shards"] if "index" in rec["files"]]
    meta = {**_settings(plan), "version": version, "shards": shards, "parent": plan.cfg.index_uri}
    rel = f"{INDEX}/{version}.meta.json"
    storage.write_text(storage.join(plan.out_uri, rel), dumps(meta))
    storage.write_text(storage.join(plan.out_uri, INDEX, META), dumps(meta))
    return rel


class Index:
    """The index files of an earlier run (and of the runs it was checked against)."""

    def __init__(self, files: list[str], docs: list[int], data: list[str], plan):
        self.files, self.data, self.plan = files, data, plan
        # Document k of the concatenated index has global number -1 - k.
        self.starts = np.r_[0, np.cumsum(docs)].astype(np.int64)

    @classmethod
    def open(cls, uri: str, plan) -> "Index":
        files, docs, data, seen = [], [], [], set()
        while uri and uri not in seen:
            seen.add(uri)
            meta_uri = storage.join(uri, INDEX, META)
            if not storage.exists(meta_uri):
                raise InputNotFound(f"data.minhash.index_uri: {uri} has no {INDEX}/{META}; "
                                        f"point it at the output of an earlier MinHash run")
            meta = json.loads(storage.read_text(meta_uri))
            wanted = _settings(plan)
            if {k: meta.get(k) for k in wanted} != wanted:
                raise UserError(f"data.minhash.index_uri: {uri} was made with "
                                 f"{ {k: meta.get(k) for k in wanted} }, this run uses {wanted}")
            files += [storage.join(uri, INDEX, s["file"]) for s in meta["shards"]]
            docs += [s["docs"] for s in meta["shards"]]
            data += [storage.join(uri, s["data"]) for s in meta["shards"]]
            uri = meta.get("parent")
        return cls(files, docs, data, plan)

    def locate(self, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index file, row in it) of index documents."""
        k = -1 - docs
        f = np.searchsorted(self.starts, k, side="right") - 1
        return f, k - self.starts[f]

    @property
    def band_folder(self) -> str:
        return self.plan.folder("index_bands")

    def partition(self, executor) -> None:
        """Route the index's band hashes into this run's buckets (`band_folder`)."""
        plan, folder = self.plan, self.band_folder

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

    def _gather(self, docs: np.ndarray, key: str) -> np.ndarray:
        f, row = self.locate(docs)
        out = None
        for fi in np.unique(f).tolist():
            sel = f == fi
            values = partitions.load(self.files[fi])[key][row[sel]]
            if out is None:
                out = np.empty((len(docs),) + values.shape[1:], dtype=values.dtype)
            out[sel] = values
        return out if out is not None else np.zeros(0)

    def ids(self, docs: np.ndarray) -> list[str]:
        return self._gather(docs, "id").tolist()
