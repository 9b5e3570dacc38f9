"""Documents of token files as the project, datatrove and Megatron each read them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llm.train.data import TokenDataset


def project_documents(uri: str, split: str) -> list[tuple[int, ...]]:
    """A split's documents through the training loader (`TokenDataset`), cut at its `.idx` starts."""
    data = TokenDataset(uri)
    tokens = data.split(split)
    docs = []
    for part, entry in enumerate(data.manifest.splits[split]):
        starts = np.fromfile(Path(uri) / entry["idx"], dtype="<i8") + int(tokens.offsets[part])
        docs += [tuple(tokens.window(int(a), int(b - a)).tolist()) for a, b in zip(starts[:-1], starts[1:])]
    return docs


def part_documents(root: str, parts: list[dict], dtype: str) -> list[tuple[int, ...]]:
    """The documents of project-format parts (`bin`, `idx` relative to `root`), in part order."""
    docs = []
    for entry in parts:
        ids = np.fromfile(Path(root) / entry["bin"], dtype=dtype)
        starts = np.fromfile(Path(root) / entry["idx"], dtype="<i8")
        docs += [tuple(ids[a:b].tolist()) for a, b in zip(starts[:-1], starts[1:])]
    return docs


def datatrove_documents(folder: str, token_size: int) -> list[tuple[int, ...]]:
    """Every document of a folder of `.ds` files, in the order datatrove's folder dataset reads them.

    Each file is read as one window (seq_len = its tokens - 1) with positions from its `.ds.index`:
    position 0 marks each document's first token."""
    from datatrove.utils.dataset import DatatroveFileDataset, DatatroveFolderDataset

    folder_ds = DatatroveFolderDataset(folder, seq_len=1, token_size=token_size)
    docs = []
    for f in folder_ds.files:
        n = f.fsize // token_size
        item = DatatroveFileDataset((f.file_path, folder_ds.data_folder), seq_len=n - 1, token_size=token_size,
                                    return_positions=True)[0]
        ids, positions = item["input_ids"].numpy(), item["positions"].numpy()
        assert len(ids) == n
        starts = list(np.flatnonzero(positions == 0)) + [n]
        docs += [tuple(ids[a:b].tolist()) for a, b in zip(starts[:-1], starts[1:])]
    return docs


def megatron_documents(prefix: str) -> list[tuple[int, ...]]:
    """Every document of a Megatron indexed dataset (`prefix.bin`/`prefix.idx`), via `IndexedDataset`."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    bounds = ds.document_indices
    return [tuple(int(t) for s in range(bounds[d], bounds[d + 1]) for t in ds[s]) for d in range(len(bounds) - 1)]
