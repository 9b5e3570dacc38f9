"""Token datasets: memory-mapped reading of the flat token files, training and validation batches.

A token dataset is a folder `T` (local or s3://) with `T/_manifest.json` whose `"tokens"` key lists,
per split, parts of raw little-endian token ids (`.bin`, dtype uint16 or uint32, documents as
bos, tokens..., eos, concatenated) and document start offsets (`.idx`, int64, docs+1 entries); parts of
the scored splits may add per-token UTF-8 byte counts of the text (`.bytes`, uint16), for bits per byte.

Training windows for global step s are drawn from `PCG64([seed, s])` for the whole global batch and
each rank takes its slice, so the data a step sees depends only on (seed, step): not on the number
of workers, gradient-accumulation steps, or where a resumed run restarted.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from llm import storage
from llm.errors import InputNotFound, UserError

MANIFEST = "_manifest.json"
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
_BYTES_DTYPE = np.dtype("<u2")  # per-token byte counts (`.bytes`), as llm.tokenizer.token_bytes writes them


def _default_cache_dir() -> str:
    return os.environ.get("LLMPIPE_TOKEN_CACHE") or os.path.join(tempfile.gettempdir(), "llmpipe-token-cache")


@dataclass(frozen=True)
class TokenManifest:
    """The `"tokens"` section of a token dataset's manifest."""

    dtype: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    splits: dict[str, list[dict]]

    @classmethod
    def read(cls, uri: str) -> "TokenManifest":
        """The token section of `uri`'s current version, or of `uri@version`."""
        tok = read_token_version(uri)["tokens"]
        return cls(
            dtype=tok["dtype"],
            vocab_size=int(tok["vocab_size"]),
            bos_id=int(tok.get("bos_id", 2)),
            eos_id=int(tok.get("eos_id", 3)),
            pad_id=int(tok.get("pad_id", 0)),
            splits={name: list(parts) for name, parts in tok["splits"].items()},
        )


def read_token_version(uri: str) -> dict:
    """The whole manifest of `uri`'s current version (or `uri@version`), checked to be a token dataset's
    with a dtype the project reads."""
    from llm import versions

    manifest_uri = storage.join(versions.split(uri)[0], MANIFEST)
    try:
        data = versions.read(uri)
    except FileNotFoundError:
        raise InputNotFound(f"{manifest_uri}: no token manifest (run the tokenize stage first)") from None
    if "tokens" not in data:
        raise UserError(f"{manifest_uri}: no 'tokens' section; is this a token dataset?")
    if data["tokens"]["dtype"] not in _DTYPES:
        raise ValueError(f"{manifest_uri}: unsupported token dtype {data['tokens']['dtype']!r}")
    return data


class TokenSplit:
    """One split as a single virtual array over its memory-mapped parts.

    `byte_parts`, when the dataset has them (the scored splits of token datasets that record bytes),
    hold per token the UTF-8 bytes of text it stands for, in the same layout as `parts`."""

    def __init__(self, name: str, parts: list[np.ndarray], doc_starts: list[np.ndarray],
                 byte_parts: list[np.ndarray] | None = None):
        self.name = name
        keep = [i for i, p in enumerate(parts) if len(p)]
        self.parts = [parts[i] for i in keep]
        self.byte_parts = None if byte_parts is None else [byte_parts[i] for i in keep]
        sizes = [len(p) for p in self.parts]
        # offsets[i] = position of part i's first token in the concatenation
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.num_docs = int(sum(max(len(d) - 1, 0) for d in doc_starts))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def has_bytes(self) -> bool:
        """Whether the split knows the bytes of text of its tokens (bits per byte can be measured)."""
        return self.byte_parts is not None

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) of the concatenated split as int64 (may span parts)."""
        return self._gather(self.parts, start, length)

    def window_bytes(self, start: int, length: int) -> int:
        """UTF-8 bytes of text that tokens [start, start+length) stand for (the split must `has_bytes`)."""
        if self.byte_parts is None:
            raise ValueError(f"split {self.name!r} has no per-token byte counts")
        return int(self._gather(self.byte_parts, start, length).sum())

    def _gather(self, parts: list[np.ndarray], start: int, length: int) -> np.ndarray:
        if start < 0 or start + length > len(self):
            raise IndexError(f"window [{start}, {start + length}) outside split {self.name!r} of {len(self)} tokens")
        out = np.empty(length, dtype=np.int64)
        filled = 0
        part = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pos = start - int(self.offsets[part])
        while filled < length:
            chunk = parts[part][pos : pos + (length - filled)]
            out[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
            part, pos = part + 1, 0
        return out


class TokenDataset:
    """A token dataset opened for reading; S3 parts are copied to a local cache folder once."""

    def __init__(self, uri: str, cache_dir: str | None = None, seen_parts: frozenset[str] = frozenset()):
        self.uri = uri
        self.manifest = TokenManifest.read(uri)
        # Training-split parts an earlier run already trained on (a run continued on a grown corpus):
        # left out of the training split, never of validation or test.
        self.seen_parts = frozenset(seen_parts)
        self._cache_dir = cache_dir or _default_cache_dir()
        self._splits: dict[str, TokenSplit] = {}

    @property
    def vocab_size(self) -> int:
        return self.manifest.vocab_size

    def _local_path(self, rel: str) -> str:
        from llm import versions

        uri = storage.join(versions.split(self.uri)[0], rel)
        if not storage.is_s3(uri):
            return uri
        # One cache folder per dataset URI; a part is fetched again only if its size changed.
        key = hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        local = Path(self._cache_dir) / key / rel
        if not local.exists() or local.stat().st_size != storage.size(uri):
            storage.write_bytes(str(local), storage.read_bytes(uri))
        return str(local)

    def split(self, name: str) -> TokenSplit:
        """The named split ("train", "val", "test"), memory-mapped."""
        if name not in self._splits:
            if name not in self.manifest.splits:
                raise KeyError(f"{self.uri}: no split {name!r} (has {sorted(self.manifest.splits)})")
            dtype = _DTYPES[self.manifest.dtype]
            parts, starts = [], []
            entries = [e for e in self.manifest.splits[name] if name != "train" or e["bin"] not in self.seen_parts]
            if not entries:
                raise UserError(f"{self.uri}: every part of split {name!r} was trained on already (nothing new; "
                                "train.resume_data: all trains on them again)")
            # Per-token byte counts only when every part has them (older datasets have none).
            byte_parts: list[np.ndarray] | None = [] if all("token_bytes" in e for e in entries) else None
            for entry in entries:
                parts.append(_memmap(self._local_path(entry["bin"]), dtype))
                starts.append(np.fromfile(self._local_path(entry["idx"]), dtype="<i8"))
                if byte_parts is not None:
                    byte_parts.append(_memmap(self._local_path(entry["token_bytes"]), _BYTES_DTYPE))
                    if len(byte_parts[-1]) != len(parts[-1]):
                        raise UserError(f"{self.uri}: {entry['token_bytes']} has {len(byte_parts[-1])} counts for "
                                        f"{len(parts[-1])} tokens of {entry['bin']}; rerun the tokenize stage")
            self._splits[name] = TokenSplit(name, parts, starts, byte_parts)
        return self._splits[name]


def _memmap(path: str, dtype: np.dtype) -> np.ndarray:
    # np.memmap refuses empty files; an empty part contributes nothing anyway.
    n = os.path.getsize(path) // dtype.itemsize
    return np.memmap(path, dtype=dtype, mode="r") if n else np.empty(0, dtype)


# ------------------------------------------------------------------------------------------ batches


def global_batch_starts(num_tokens: int, context_length: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Start offsets of the `batch_size` windows (context_length + 1 tokens each) of global step `step`."""
    span = context_length + 1
    if num_tokens < span:
        raise UserError(f"training split has {num_tokens} tokens, fewer than one window of {span} "
                        "(model.context_length + 1): lower model.context_length or add data")
    rng = np.random.Generator(np.random.PCG64([seed, step]))
    return rng.integers(0, num_tokens - span + 1, size=batch_size, dtype=np.int64)


class TrainBatches:
    """Micro-batches of one rank for a global step: its slice of the step's global batch.

    Rank r of w takes global windows [r*B/w, (r+1)*B/w) and cuts them into `grad_accum` micro-batches
    of `micro_batch_size`, so the union over ranks and micro-steps is always the same global batch.
    """

    def __init__(
        self,
        split: TokenSplit,
        context_length: int,
        batch_size: int,
        micro_batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size % (micro_batch_size * world_size):
            raise ValueError(
                f"batch_size {batch_size} is not a multiple of micro_batch_size x world_size "
                f"({micro_batch_size} x {world_size})"
            )
        self.split = split
        self.context_length = context_length
        self.batch_size = batch_size
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.grad_accum = batch_size // (micro_batch_size * world_size)

    def micro_batches(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, targets), each (micro_batch_size, context_length) int64, for each micro-step."""
        starts = global_batch_starts(len(self.split), self.context_length, self.batch_size, self.seed, step)
        per_rank = self.batch_size // self.world_size
        mine = starts[self.rank * per_rank : (self.rank + 1) * per_rank]
        for i in range(self.grad_accum):
            chunk = mine[i * self.micro_batch_size : (i + 1) * self.micro_batch_size]
            yield windows_to_batch(self.split, chunk, self.context_length)


def windows_to_batch(split: TokenSplit, starts: np.ndarray, context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack windows of context_length+1 tokens into (inputs, targets) shifted by one position."""
    rows = np.stack([split.window(int(s), context_length + 1) for s in starts])
    data = torch.from_numpy(rows)
    return data[:, :-1], data[:, 1:]


def val_window_starts(num_tokens: int, context_length: int, max_windows: int) -> np.ndarray:
    """Starts of contiguous, non-overlapping validation windows from the beginning of the split.

    Window k predicts tokens (k*T, (k+1)*T]; it reads one token past its end for the last target.
    At most `max_windows`, fewer when the split is short.
    """
    available = (num_tokens - 1) // context_length
    if available < 1:
        raise UserError(f"validation split has {num_tokens} tokens, fewer than one window of {context_length + 1} "
                        "(model.context_length + 1): raise tokenize.val_fraction or lower model.context_length")
    return np.arange(min(available, max_windows), dtype=np.int64) * context_length


def val_batches(
    split: TokenSplit,
    context_length: int,
    batch_size: int,
    num_batches: int,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The deterministic validation batches of one rank: batch j goes to rank j % world_size.

    The same `num_batches * batch_size` windows are evaluated whatever the world size (the last batch
    may be shorter when the split runs out).
    """
    for starts in val_batch_starts(len(split), context_length, batch_size, num_batches, rank, world_size):
        yield windows_to_batch(split, starts, context_length)


def val_batch_starts(num_tokens: int, context_length: int, batch_size: int, num_batches: int, rank: int = 0,
                     world_size: int = 1) -> Iterator[np.ndarray]:
    """The window starts of each validation batch of one rank, as `val_batches` takes them."""
    starts = val_window_starts(num_tokens, context_length, num_batches * batch_size)
    for j in range(rank, -(-len(starts) // batch_size), world_size):
        yield starts[j * batch_size : (j + 1) * batch_size]


# ------------------------------------------------------------------------------------------ writing


def write_token_dataset(uri: str, splits: dict[str, list[list[int]]], vocab_size: int,
                        token_bytes: dict[str, list[list[int]]] | None = None) -> None:
    """Write a one-part-per-split token dataset from lists of documents' token ids (tests, demos).

    Each document is stored as given (callers include bos/eos if they want them), in the dtype the
    vocabulary needs. `token_bytes`: per split, each document's per-token byte counts (as the tokenize
    stage writes them for its scored splits). Other manifest keys that the tokenize stage writes are
    not produced.
    """
    dtype_name = "uint16" if vocab_size <= 65536 else "uint32"
    entries: dict[str, list[dict]] = {}
    for name, docs in splits.items():
        flat = np.fromiter((t for doc in docs for t in doc), dtype=np.int64)
        if len(flat) and (flat.min() < 0 or flat.max() >= vocab_size):
            raise ValueError(f"split {name!r} has token ids outside [0, {vocab_size})")
        starts = np.concatenate([[0], np.cumsum([len(d) for d in docs], dtype=np.int64)]).astype("<i8")
        bin_rel, idx_rel = f"{name}/part-00000.bin", f"{name}/part-00000.idx"
        storage.write_bytes(storage.join(uri, bin_rel), flat.astype(_DTYPES[dtype_name]).tobytes())
        storage.write_bytes(storage.join(uri, idx_rel), starts.tobytes())
        entries[name] = [{"bin": bin_rel, "idx": idx_rel, "tokens": int(len(flat)), "docs": len(docs)}]
        if token_bytes is not None and name in token_bytes:
            counts = np.fromiter((b for doc in token_bytes[name] for b in doc), dtype=np.int64)
            if len(counts) != len(flat):
                raise ValueError(f"split {name!r}: {len(counts)} byte counts for {len(flat)} tokens")
            entries[name][0].update(token_bytes=f"{name}/part-00000.bytes", text_bytes=int(counts.sum()))
            storage.write_bytes(storage.join(uri, f"{name}/part-00000.bytes"), counts.astype(_BYTES_DTYPE).tobytes())
    manifest = {
        "tokens": {
            "dtype": dtype_name,
            "vocab_size": int(vocab_size),
            "bos_id": 2,
            "eos_id": 3,
            "pad_id": 0,
            "splits": entries,
        }
    }
    from llm.config import stable_hash

    manifest["version"] = stable_hash(manifest)  # what training runs are named after
    text = json.dumps(manifest, indent=2)
    storage.write_text(storage.join(uri, "_versions", f"{manifest['version']}.json"), text)
    storage.write_text(storage.join(uri, MANIFEST), text)
