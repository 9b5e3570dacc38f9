"""Prepared fine-tuning tokens and their batches: examples packed into windows, a step's global batch,
its per-rank slice.

`SftExamples` holds each split's examples as concatenated token ids with a train mask (`SftSplit`) and
is saved to one file, so a driver prepares the data once and every training worker loads it.

An example of n tokens takes n - 1 positions of a window (inputs ids[:-1], targets ids[1:], a target
kept only where the example's mask trains on that token, else -100). Several examples share a window
(`pack`), each with positions from 0 and its own segment id so attention stays inside it (the model's
`segments`); the rest of the window is padding: pad inputs, -100 targets, a segment of its own.

Training windows are packed once, from the training examples in an order shuffled by the seed. Global
step s takes `batch_size` windows from a per-epoch permutation of all windows (epoch e's is drawn from
`PCG64([seed, e])`): positions s*B .. s*B+B-1 of the concatenated permutations, so every window is seen
once per epoch, and what a step sees depends only on (seed, step), not on the number of ranks.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from llm import storage
from llm.errors import UserError

IGNORE = -100  # the target of a position not trained on (cross_entropy's ignore_index)
_OPEN_ROWS = 64  # windows still open to examples while packing: near first-fit quality at bounded cost


@dataclass
class SftSplit:
    """One split's examples concatenated: token ids, the train mask, offsets (examples + 1), ids, and
    per token the UTF-8 bytes of message text it stands for (None in examples prepared before them)."""

    ids: np.ndarray
    mask: np.ndarray
    offsets: np.ndarray
    names: list[str]
    text_bytes: np.ndarray | None = None

    @classmethod
    def build(cls, examples: list[tuple]) -> "SftSplit":
        """From (id, ids, mask) or (id, ids, mask, text bytes) per example, in order."""
        offsets = np.concatenate([[0], np.cumsum([len(e[1]) for e in examples], dtype=np.int64)]).astype(np.int64)
        ids = np.concatenate([e[1] for e in examples] or [np.empty(0)]).astype(np.int32)
        mask = np.concatenate([e[2] for e in examples] or [np.empty(0)]).astype(np.uint8)
        text_bytes = None
        if all(len(e) > 3 for e in examples):
            text_bytes = np.concatenate([e[3] for e in examples] or [np.empty(0)]).astype(np.uint16)
        return cls(ids, mask, offsets, [e[0] for e in examples], text_bytes)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, mask) of example i."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.ids[a:b], self.mask[a:b]


@dataclass
class SftExamples:
    """Prepared fine-tuning data: both splits, the counts, and the quarantine entries.

    `counts`: read (records), kept, quarantined, quarantined_by_reason, train_examples, val_examples,
    train_tokens, val_tokens and trained_token_share (mask-1 tokens / all tokens, both splits)."""

    train: SftSplit
    val: SftSplit
    counts: dict
    quarantine: pa.Table
    context_length: int
    pad_id: int = 0

    def save(self, uri: str) -> None:
        """Write everything to one .npz file (local or s3://), without pickles."""
        meta = {"counts": self.counts, "context_length": self.context_length, "pad_id": self.pad_id,
                "names": {"train": self.train.names, "val": self.val.names}}
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, self.quarantine.schema) as writer:
            writer.write_table(self.quarantine)
        arrays = {f"{s}_{k}": getattr(getattr(self, s), k) for s in ("train", "val")
                  for k in ("ids", "mask", "offsets", "text_bytes") if getattr(getattr(self, s), k) is not None}
        out = io.BytesIO()
        np.savez_compressed(out, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                            quarantine=np.frombuffer(sink.getvalue(), np.uint8), **arrays)
        storage.write_bytes(uri, out.getvalue())

    @classmethod
    def load(cls, uri: str) -> "SftExamples":
        """Read what `save` wrote."""
        with np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes())
            quarantine = pa.ipc.open_stream(data["quarantine"].tobytes()).read_all()
            splits = {s: SftSplit(data[f"{s}_ids"], data[f"{s}_mask"], data[f"{s}_offsets"], meta["names"][s],
                                  data[f"{s}_text_bytes"] if f"{s}_text_bytes" in data.files else None)
                      for s in ("train", "val")}
        return cls(splits["train"], splits["val"], meta["counts"], quarantine, meta["context_length"], meta["pad_id"])


class Batch(NamedTuple):
    """One (micro-)batch, each tensor (B, T) int64: the model's idx, targets, positions and segments."""

    inputs: torch.Tensor
    targets: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor


class Windows(NamedTuple):
    """Packed windows: the examples of window w are `examples[offsets[w]:offsets[w + 1]]`."""

    examples: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1


def pack_windows(lengths: np.ndarray, context_length: int, order: Iterable[int], pack: bool = True) -> Windows:
    """Place examples (of `lengths` tokens, taken in `order`) into windows of `context_length` positions.

    First fit among the last `_OPEN_ROWS` windows, else a new window; no example is ever split (one
    longer than context_length + 1 tokens is an error: preparation quarantines those). `pack=False`:
    one example per window."""
    order = np.asarray(list(order), dtype=np.int64)
    free = np.empty(len(order), dtype=np.int64)  # room left per window; at most one window per example
    window_of = np.empty(len(order), dtype=np.int64)
    count = 0
    for k, example in enumerate(order):
        need = int(lengths[example]) - 1
        if need > context_length or need < 1:
            raise ValueError(f"example {example} of {lengths[example]} tokens does not fit a window of {context_length}")
        low = max(0, count - _OPEN_ROWS)
        fits = np.flatnonzero(free[low:count] >= need) if pack else ()
        if len(fits):
            w = low + int(fits[0])
        else:
            w, count = count, count + 1
            free[w] = context_length
        free[w] -= need
        window_of[k] = w
    # Stable sort keeps each window's examples in the order they were placed.
    by_window = np.argsort(window_of, kind="stable")
    offsets = np.searchsorted(window_of[by_window], np.arange(count + 1)).astype(np.int64)
    return Windows(order[by_window], offsets)


def example_lengths(split: SftSplit) -> np.ndarray:
    """Tokens per example."""
    return np.diff(split.offsets)


def trained_per_example(split: SftSplit) -> np.ndarray:
    """Targets trained on per example: its mask-1 tokens except the first (never a target)."""
    if not len(split):
        return np.zeros(0, dtype=np.int64)
    starts = split.offsets[:-1]
    mask = split.mask.astype(np.int64)
    return np.add.reduceat(mask, starts) - mask[starts]


def make_batch(split: SftSplit, windows: Windows, chosen: np.ndarray, context_length: int, pad_id: int) -> Batch:
    """The batch of the windows `chosen` (indices into `windows`)."""
    shape = (len(chosen), context_length)
    inputs, targets = np.full(shape, pad_id, np.int64), np.full(shape, IGNORE, np.int64)
    positions, segments = np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for row, w in enumerate(chosen):
        members = windows.examples[windows.offsets[w]:windows.offsets[w + 1]]
        at = 0
        for segment, example in enumerate(members):
            ids, mask = split.example(int(example))
            n = len(ids) - 1
            inputs[row, at:at + n] = ids[:-1]
            targets[row, at:at + n] = np.where(mask[1:] == 1, ids[1:], IGNORE)
            positions[row, at:at + n] = np.arange(n)
            segments[row, at:at + n] = segment
            at += n
        # Padding is a segment of its own: its queries see only padding, never an example.
        positions[row, at:] = np.arange(context_length - at)
        segments[row, at:] = len(members)
    return Batch(*(torch.from_numpy(a) for a in (inputs, targets, positions, segments)))


class SftBatches:
    """The training micro-batches of one data-parallel rank, and their loss weights.

    Rank r of dp takes windows [r*B/dp, (r+1)*B/dp) of the step's global batch, cut into micro-batches
    of `micro_batch_size`. Micro-batch i's weight is dp * n_i / N (n_i: its trained targets; N: those of
    the whole global batch, known on every rank without communication): averaging over ranks the sum of
    weight_i * mean_loss_i gives the mean loss over every trained target of the global batch."""

    def __init__(self, split: SftSplit, context_length: int, batch_size: int, micro_batch_size: int, seed: int,
                 dp_rank: int = 0, dp: int = 1, pack: bool = True, pad_id: int = 0):
        if batch_size % (micro_batch_size * dp):
            raise ValueError(f"batch_size {batch_size} is not a multiple of micro_batch_size x dp "
                             f"({micro_batch_size} x {dp})")
        if not 0 <= dp_rank < dp:
            raise ValueError(f"dp_rank {dp_rank} outside [0, {dp})")
        if not len(split):
            raise UserError("no training examples to fine-tune on (see the quarantine counts)")
        self.split, self.context_length, self.pad_id = split, context_length, pad_id
        self.batch_size, self.micro_batch_size, self.seed = batch_size, micro_batch_size, seed
        self.dp_rank, self.dp = dp_rank, dp
        # Its own stream, apart from the per-epoch ones, so the packing order and the epochs' orders
        # do not repeat each other.
        shuffle = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(1,))))
        self.packed = pack_windows(example_lengths(split), context_length, shuffle.permutation(len(split)), pack)
        per_example = trained_per_example(split)
        # Trained targets per window (no window is empty, so reduceat's segments are all proper).
        self.trained = np.add.reduceat(per_example[self.packed.examples], self.packed.offsets[:-1]).astype(np.int64)
        self._perms: dict[int, np.ndarray] = {}

    @property
    def windows(self) -> int:
        """Packed training windows (one epoch)."""
        return len(self.packed)

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 8:
                self._perms.clear()
            self._perms[epoch] = np.random.Generator(np.random.PCG64([self.seed, epoch])).permutation(self.windows)
        return self._perms[epoch]

    def global_windows(self, step: int) -> np.ndarray:
        """The `batch_size` window indices of global step `step`, the same on every rank."""
        sample = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epochs, within = np.divmod(sample, self.windows)
        return np.array([self._perm(int(e))[i] for e, i in zip(epochs, within)], dtype=np.int64)

    def step(self, step: int) -> tuple[list[Batch], list[float]]:
        """This rank's micro-batches of global step `step`, and each one's loss weight."""
        chosen = self.global_windows(step)
        total = int(self.trained[chosen].sum())
        per_rank = self.batch_size // self.dp
        mine = chosen[self.dp_rank * per_rank:(self.dp_rank + 1) * per_rank]
        batches, weights = [], []
        for i in range(0, per_rank, self.micro_batch_size):
            part = mine[i:i + self.micro_batch_size]
            batches.append(make_batch(self.split, self.packed, part, self.context_length, self.pad_id))
            # Every example trains on at least its closing end marker, so total > 0.
            weights.append(self.dp * int(self.trained[part].sum()) / total)
        return batches, weights


def val_batches(split: SftSplit, context_length: int, batch_size: int, num_batches: int | None = None,
                dp_rank: int = 0, dp: int = 1, pack: bool = True, pad_id: int = 0) -> Iterator[Batch]:
    """The held-out batches of one rank: all examples packed in file order, `batch_size` windows per
    batch (the last may be shorter), at most `num_batches`; rank r takes batches r, r + dp, ...
    Nothing when the split is empty."""
    if not len(split):
        return
    windows, count = _val_windows(split, context_length, batch_size, num_batches, pack)
    for j in range(dp_rank, count, dp):
        chosen = np.arange(j * batch_size, min((j + 1) * batch_size, len(windows)))
        yield make_batch(split, windows, chosen, context_length, pad_id)


def _val_windows(split: SftSplit, context_length: int, batch_size: int, num_batches: int | None,
                 pack: bool) -> tuple[Windows, int]:
    """The held-out examples packed in file order, and how many batches of them are scored."""
    windows = pack_windows(example_lengths(split), context_length, range(len(split)), pack)
    count = -(-len(windows) // batch_size)
    return windows, count if num_batches is None else min(count, num_batches)


def val_response_bytes(split: SftSplit, context_length: int, batch_size: int, num_batches: int | None = None,
                       pack: bool = True) -> int | None:
    """UTF-8 bytes of the response text whose tokens all of `val_batches` score (every rank's share
    together); None when the split records no bytes per token. Each example in those windows is
    scored whole, so its trained targets' bytes are its responses' bytes."""
    if split.text_bytes is None:
        return None
    if not len(split):
        return 0
    windows, count = _val_windows(split, context_length, batch_size, num_batches, pack)
    scored = windows.examples[: windows.offsets[min(count * batch_size, len(windows))]]
    trained = split.text_bytes.astype(np.int64) * (split.mask == 1)
    trained[split.offsets[:-1]] = 0  # an example's first token is only an input, never a target
    per_example = np.add.reduceat(np.append(trained, 0), split.offsets[:-1])
    return int(per_example[scored].sum())


def response_loss(model: torch.nn.Module, batches: Iterable[Batch], device: torch.device | str,
                  autocast_dtype: torch.dtype | None = None) -> tuple[float, int]:
    """(summed cross-entropy, trained targets) over `batches`: sums, so ranks can all-reduce them
    before dividing. Logits are taken in fp32 for the loss; the model's train/eval mode is restored."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    try:
        with torch.no_grad():
            for batch in batches:
                inputs, targets, positions, segments = (t.to(device) for t in batch)
                with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                                    enabled=autocast_dtype is not None):
                    logits, _ = model(inputs, positions=positions, segments=segments)
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                                       ignore_index=IGNORE, reduction="sum")
                total += loss.double()
                tokens += int((targets != IGNORE).sum())
    finally:
        model.train(was_training)
    return float(total), tokens
