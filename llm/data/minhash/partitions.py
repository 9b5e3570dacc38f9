"""Numpy arrays through storage: the files the MinHash stage's shuffles pass between Ray tasks.

A shuffle writes, from each producing task, one file per destination partition
(`<folder>/<partition>/<producer>.arr`); a consuming task reads its partition's folder. Nothing goes
through the driver.

These are scratch files of one run, so they use a plain layout rather than `.npz`: a JSON header, then
each array's raw bytes, 64-byte aligned. Writing does no zip checksums, digests or fsync (the rename
still makes each file appear whole), and reading maps arrays straight onto the bytes read, without a
copy. Loaded arrays are read-only. The signature index a run leaves behind is a durable output and
stays `.npz` (`save`/`load`).
"""

from __future__ import annotations

import io
import json

import numpy as np

from llm import storage

SUFFIX = ".arr"
_MAGIC = b"LLMPARR1"
_ALIGN = 64


def put(uri: str, **arrays: np.ndarray) -> None:
    """Write arrays as one scratch file."""
    meta, chunks, offset = [], [], 0
    for name, value in arrays.items():
        value = np.ascontiguousarray(value)
        meta.append([name, value.dtype.str, list(value.shape), offset])
        data = value.tobytes()
        chunks.append(data + b"\0" * (-len(data) % _ALIGN))
        offset += len(chunks[-1])
    header = json.dumps(meta).encode()
    header += b" " * (-(len(_MAGIC) + 8 + len(header)) % _ALIGN)
    storage.write_bytes(uri, b"".join([_MAGIC, len(header).to_bytes(8, "little"), header, *chunks]), durable=False)


def get(uri: str) -> dict[str, np.ndarray]:
    """Arrays of a scratch file (read-only views of the bytes read)."""
    data = storage.read_bytes(uri)
    if data[:len(_MAGIC)] != _MAGIC:
        raise ValueError(f"{uri}: not a scratch array file (remove the run's _work folder and rerun)")
    size = int.from_bytes(data[len(_MAGIC):len(_MAGIC) + 8], "little")
    start = len(_MAGIC) + 8 + size
    out = {}
    for name, dtype, shape, offset in json.loads(data[len(_MAGIC) + 8:start]):
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        out[name] = np.frombuffer(data, dtype, count, start + offset).reshape(shape)
    return out


def save(uri: str, **arrays: np.ndarray) -> None:
    """Write arrays as a durable `.npz` file (outputs that outlive the run)."""
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
    """Write rows of `arrays` to `folder/<key % n>/<producer>.arr`; empty partitions get no file."""
    part = np.asarray(key, dtype=np.int64) % num_partitions
    order = np.argsort(part, kind="stable")
    part = part[order]
    bounds = np.searchsorted(part, np.arange(num_partitions + 1))
    for p in range(num_partitions):
        lo, hi = bounds[p], bounds[p + 1]
        if hi > lo:
            sel = order[lo:hi]
            put(storage.join(part_dir(folder, p), f"{producer}{SUFFIX}"), **{k: v[sel] for k, v in arrays.items()})


def read_partition(folder: str, partition: int, names: dict[str, str]) -> dict[str, np.ndarray]:
    """Concatenate every producer's file of one partition; `names` maps array name -> dtype for the
    empty case."""
    parts = [get(uri) for uri in storage.list_files(part_dir(folder, partition), SUFFIX)]
    if not parts:
        return {k: np.zeros(0, dtype=dt) for k, dt in names.items()}
    return {k: np.concatenate([p[k] for p in parts]) for k in names}
