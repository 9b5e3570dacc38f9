"""Numpy arrays through storage: the files the MinHash stage's shuffles pass between Ray tasks.

A shuffle writes, from each producing task, one `.npz` per destination partition
(`<folder>/<partition>/<producer>.npz`); a consuming task reads its partition's folder. Nothing goes
through the driver.
"""

from __future__ import annotations

import io

import numpy as np

from llm import storage


def save(uri: str, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    storage.write_bytes(uri, buf.getvalue())


def load(uri: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def part_dir(folder: str, partition: int) -> str:
    return storage.join(folder, f"{partition:05d}")


def write_partitioned(folder: str, producer: str, key: np.ndarray, num_partitions: int,
                      **arrays: np.ndarray) -> None:
    """Write rows of `arrays` to `folder/<key % n>/<producer>.npz`; empty partitions get no file."""
    part = np.asarray(key, dtype=np.int64) % num_partitions
    order = np.argsort(part, kind="stable")
    part = part[order]
    bounds = np.searchsorted(part, np.arange(num_partitions + 1))
    for p in range(num_partitions):
        lo, hi = bounds[p], bounds[p + 1]
        if hi > lo:
            sel = order[lo:hi]
            save(storage.join(part_dir(folder, p), f"{producer}.npz"), **{k: v[sel] for k, v in arrays.items()})


def read_partition(folder: str, partition: int, names: dict[str, str]) -> dict[str, np.ndarray]:
    """Concatenate every producer's file of one partition; `names` maps array name -> dtype for the
    empty case."""
    parts = [load(uri) for uri in storage.list_files(part_dir(folder, partition), ".npz")]
    if not parts:
        return {k: np.zeros(0, dtype=dt) for k, dt in names.items()}
    return {k: np.concatenate([p[k] for p in parts]) for k in names}
