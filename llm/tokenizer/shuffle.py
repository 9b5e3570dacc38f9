"""A seeded global shuffle of a token split's documents, in two passes of bounded memory.

Scatter (one task per input part): each document goes to one of B buckets, drawn from
`PCG64([seed, part digest])`, so a document's bucket depends only on the seed and its part's content;
the part's documents of bucket b are written, in part order, as piece `b/<part>`. Gather (one task per
bucket): the bucket's pieces are read in part order, their documents permuted by `PCG64([seed, B, b])`
and written as output part b. Buckets are concatenated in order. Random buckets, then a random order
inside each, give a uniformly random order of all documents, while a task holds one part (scatter) or
one bucket (gather), never the split. B = ceil(split bytes / `shuffle_bucket_bytes`), so a bucket's
tokens are about that budget, and a gather task holds about four times that at its peak (measured: a
286 MiB split in 9 buckets of 32 MiB, 130 MiB above the process's start; in 36 buckets of 8 MiB, 34 MiB).
Nothing depends on where or how many tasks run: the same input and seed give byte-identical parts.

The shuffled order is a separate output of the version (`tokens.shuffled`, files under
`shuffled/<key>/`), not a replacement of the training split:
- the project's training loader draws random windows from the whole split (`llm.train.data`), so it
  gains nothing from the order; sequential readers (datatrove's folder dataset, a Megatron blend read
  in order) are what need it, and the token files written for them (`tokenize.formats`) are written from
  the shuffled parts;
- the training split stays one part per input shard, which is what lets a grown corpus reuse every
  unchanged token shard and a continued run leave out the parts it trained on (`train.resume_data`).
  A global order depends on every document, so one new shard changes every shuffled part.
The shuffled parts take as much space again as the training split.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from llm import storage
from llm.config import stable_hash
from llm.data.dataset import dumps
from llm.tokenizer.token_formats import read_part, write_parts

#: Bump when the order this module produces changes, so earlier shuffled outputs are not reused.
SHUFFLE_VERSION = 1
DONE = "_done.json"


@dataclass(frozen=True)
class ShuffleTask:
    """One unit of a pass: a part to scatter (`index` into the parts) or a bucket to gather."""

    name: str
    index: int


def bucket_count(total_bytes: int, bucket_bytes: int) -> int:
    """Buckets of at most about `bucket_bytes` of tokens each (at least one)."""
    return max(1, math.ceil(total_bytes / bucket_bytes))


def doc_slices(tokens: np.ndarray, starts: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The documents `order` (indexes into `starts`) of a part, back to back."""
    if not len(order):
        return tokens[:0]
    return np.concatenate([tokens[starts[i]:starts[i + 1]] for i in order])


def _starts_of(lengths: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    return starts


def shuffle_split(root: str, parts: list[dict], dtype: np.dtype, seed: int, bucket_bytes: int, executor,
                  formats: tuple[str, ...] = (), tokenizer_name: str = "llmpipe-tokenizer") -> dict:
    """Shuffle the documents of `parts` (entries with `bin`, `idx`, `sha256`, `tokens`, `docs`, relative
    to `root`) into new parts under `root/shuffled/<key>/`; each is also written in `formats`. Returns
    the manifest section: seed, buckets, key, parts (entries like the split's), docs, tokens and files
    (role -> path, for the version's file list). A finished shuffle of the same parts and settings is
    reused."""
    if not parts:
        raise ValueError("shuffle: the split has no parts")
    total = sum(int(e["tokens"]) for e in parts) * dtype.itemsize
    buckets = bucket_count(total, bucket_bytes)
    key = stable_hash({"v": SHUFFLE_VERSION, "seed": seed, "buckets": buckets, "dtype": dtype.name,
                       "parts": [e["sha256"] for e in parts], "formats": list(formats), "name": tokenizer_name})[:16]
    out = f"shuffled/{key}"
    done = storage.join(root, out, DONE)
    if storage.exists(done):
        return json.loads(storage.read_text(done))
    pieces = f"{out}/pieces"

    def scatter(task: ShuffleTask) -> None:
        entry = parts[task.index]
        tokens, starts = read_part(root, entry, dtype)
        part_seed = int(entry["sha256"][:16], 16)
        bucket_of = np.random.Generator(np.random.PCG64([seed, part_seed])).integers(0, buckets, len(starts) - 1)
        order = np.argsort(bucket_of, kind="stable")  # each bucket's documents in part order
        bounds = np.searchsorted(bucket_of[order], np.arange(buckets + 1))
        lengths = np.diff(starts)
        for b in range(buckets):
            mine = order[bounds[b]:bounds[b + 1]]
            # Scratch, read once by the gather: not fsynced (a crash redoes the whole shuffle).
            _write_piece(root, f"{pieces}/{b:05d}/{task.index:05d}", doc_slices(tokens, starts, mine), lengths[mine],
                         durable=False)

    def gather(task: ShuffleTask) -> dict:
        b = task.index
        tokens, lengths = [], []
        for i in range(len(parts)):
            ids, starts = read_part(root, {"bin": f"{pieces}/{b:05d}/{i:05d}.bin",
                                           "idx": f"{pieces}/{b:05d}/{i:05d}.idx"}, dtype)
            tokens.append(ids)
            lengths.append(np.diff(starts))
        flat, sizes = np.concatenate(tokens), np.concatenate(lengths)
        del tokens  # two copies at a time at most: pieces and joined, joined and permuted, ...
        order = np.random.Generator(np.random.PCG64([seed, buckets, b])).permutation(len(sizes))
        shuffled, new_starts = doc_slices(flat, _starts_of(sizes), order), _starts_of(sizes[order])
        del flat
        stem = f"{out}/train/part-{b:05d}"
        sha = _write_piece(root, stem, shuffled, sizes[order])
        entry = {"bin": f"{stem}.bin", "idx": f"{stem}.idx", "tokens": int(new_starts[-1]), "docs": len(order),
                 "sha256": sha}
        if formats:
            entry["formats"] = write_parts(root, formats, f"train/{key}-{b:05d}", shuffled, new_starts,
                                           tokenizer_name)
        return entry

    executor.map(scatter, [ShuffleTask(f"shuffle-scatter/{e['bin']}", i) for i, e in enumerate(parts)],
                 desc="shuffle (scatter)")
    entries = executor.map(gather, [ShuffleTask(f"shuffle-gather/{b:05d}", b) for b in range(buckets)],
                           desc="shuffle (gather)")
    storage.delete(storage.join(root, pieces))  # read once; only the shuffled parts stay
    files = {"shuffled_done": storage.relative(done, root)}
    for b, entry in enumerate(entries):
        files[f"shuffled_{b:05d}_bin"], files[f"shuffled_{b:05d}_idx"] = entry["bin"], entry["idx"]
        for fmt, roles in entry.get("formats", {}).items():
            files.update({f"shuffled_{b:05d}_{fmt}_{role}": rel for role, rel in roles.items()})
    section = {"split": "train", "seed": seed, "buckets": buckets, "key": key, "parts": entries,
               "docs": sum(e["docs"] for e in entries), "tokens": sum(e["tokens"] for e in entries),
               "files": files}
    if section["tokens"] != sum(int(e["tokens"]) for e in parts) or \
            section["docs"] != sum(int(e["docs"]) for e in parts):
        raise AssertionError(f"shuffle {key}: {section['docs']} documents, {section['tokens']} tokens out of "
                             f"{sum(int(e['docs']) for e in parts)}, {sum(int(e['tokens']) for e in parts)} in")
    storage.write_text(done, dumps(section))
    return section


def _write_piece(root: str, stem: str, tokens: np.ndarray, lengths: np.ndarray, durable: bool = True) -> str:
    """Write tokens and their document starts as the project's `.bin`/`.idx`; returns the .bin's sha256
    (empty when not `durable`)."""
    data = tokens.astype(tokens.dtype.newbyteorder("<"), copy=False).tobytes()
    sha = storage.write_bytes(storage.join(root, f"{stem}.bin"), data, durable)
    del data
    storage.write_bytes(storage.join(root, f"{stem}.idx"), _starts_of(lengths).astype("<i8").tobytes(), durable)
    return sha
