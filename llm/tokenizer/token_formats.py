"""Token files other training tools read: datatrove's tokenized format and Megatron's indexed dataset.

Both are written from the project's own parts (`<split>/<name>.bin` token ids, `.idx` int64 document
starts; see `llm.tokenizer.tokenize`), one file set per part, documents and ids unchanged (bos and eos
included as the project stores them). The token bytes are the same in all three: little-endian ids of
the vocabulary's width. Only the indexes differ.

datatrove (what `DocumentTokenizer`/`DocumentTokenizerMerger` write and
`datatrove.utils.dataset.DatatroveFolderDataset` reads), files `<stem>.ds`, `<stem>.ds.index`,
`<stem>.ds.metadata`:

    .ds           token ids back to back, little-endian, `token_size` bytes each: 2 (uint16, "<H")
                  when the vocabulary fits, else 4 (uint32, "<I"). No header.
    .ds.index     uint64 little-endian, one per document: its END offset in tokens (exclusive), so the
                  last value is the file's token count. No leading 0, no count header.
    .ds.metadata  text, three lines joined by "\n" (no trailing newline):
                  "<tokenizer name>|<token_size>", the token count, the count in SI units ("1.23 kT").
                  The merger reads only the first line and splits it at "|": the name holds no "|".

The folder dataset takes every `*.ds` under a folder, recursively, in sorted path order, and cuts each
file into windows of seq_len + 1 tokens; `token_size` is passed to it (2 or 4), not read from the file.

Megatron (`megatron.core.datasets.indexed_dataset.IndexedDataset(path_prefix)`), files `<stem>.bin`
and `<stem>.idx`:

    .bin   token ids back to back in the index's dtype, no header. uint16 (code 8) when the vocabulary
           fits, else int32 (code 4): Megatron has no uint32, and ids below 2**31 are the same bytes.
    .idx   little-endian, in order:
             9 bytes  b"MMIDIDX\\x00\\x00"
             uint64   version, 1
             uint8    dtype code (DType: uint8 1, int8 2, int16 3, int32 4, int64 5, float64 6,
                      float32 7, uint16 8)
             uint64   sequence count S
             uint64   document count D + 1 (the length of the document index below)
             int32    S sequence lengths, in tokens
             int64    S sequence pointers: byte offset of each sequence in .bin
             int64    D + 1 document index: sequence index where each document starts, then S
           No sequence modes (those are only for multimodal datasets). Each document is one sequence,
           as Megatron's `preprocess_data.py` writes documents without sentence splitting, so the
           document index is 0, 1, ..., S.

`llmpipe export-tokens` writes a version's split into a folder of its own (`<split>/part-NNNNN.*`, in
training order); the tokenize stage's `formats` writes the same files beside its own, per shard, under
`datatrove/` and `megatron/`, listed in each part's entry (`formats`) and in the shard's files. Those
folders also hold earlier versions' files until `llmpipe gc` removes them: to point a folder reader at
one version alone, export it.
"""

from __future__ import annotations

import math
import struct
from typing import Iterable

import numpy as np

from llm import storage

FORMATS: tuple[str, ...] = ("datatrove", "megatron")

MEGATRON_HEADER = b"MMIDIDX\x00\x00"
MEGATRON_VERSION = 1
#: Megatron's DType codes of the two widths the project writes.
MEGATRON_DTYPE_CODES = {"uint16": 8, "int32": 4}


def format_files(fmt: str, stem: str) -> dict[str, str]:
    """Role -> path (relative to the folder written) of one part's files in `fmt`."""
    if fmt == "datatrove":
        return {"ds": f"{stem}.ds", "ds_index": f"{stem}.ds.index", "ds_metadata": f"{stem}.ds.metadata"}
    if fmt == "megatron":
        return {"bin": f"{stem}.bin", "idx": f"{stem}.idx"}
    raise ValueError(f"unknown token file format {fmt!r} (known: {', '.join(FORMATS)})")


def write_part(root: str, fmt: str, stem: str, tokens: np.ndarray, starts: np.ndarray,
               tokenizer_name: str = "llmpipe-tokenizer") -> dict[str, str]:
    """Write one part (token ids `tokens`, int64 document starts `starts` with the total last, as the
    project's `.idx` holds them) as `fmt` files at `root/<stem>.*`; returns role -> relative path."""
    starts = np.asarray(starts, dtype=np.int64)
    if len(starts) == 0 or starts[0] != 0 or starts[-1] != len(tokens) or (np.diff(starts) < 0).any():
        raise ValueError(f"{stem}: document starts do not cover its {len(tokens)} tokens")
    files = format_files(fmt, stem)
    ids = np.asarray(tokens)
    if fmt == "datatrove":
        _write_datatrove(root, files, ids, starts, tokenizer_name)
    else:
        _write_megatron(root, files, ids, starts)
    return files


def _write_datatrove(root: str, files: dict[str, str], ids: np.ndarray, starts: np.ndarray, name: str) -> None:
    if "|" in name:
        raise ValueError(f"tokenizer name {name!r} holds '|', which datatrove's metadata line splits at")
    token_size = 2 if ids.dtype.itemsize == 2 else 4
    storage.write_bytes(storage.join(root, files["ds"]), ids.astype(f"<u{token_size}").tobytes())
    storage.write_bytes(storage.join(root, files["ds_index"]), starts[1:].astype("<u8").tobytes())
    count = int(starts[-1])
    storage.write_text(storage.join(root, files["ds_metadata"]),
                       "\n".join([f"{name}|{token_size}", str(count), si_count(count, "T")]))


def _write_megatron(root: str, files: dict[str, str], ids: np.ndarray, starts: np.ndarray) -> None:
    if ids.dtype.itemsize == 2:
        dtype_name = "uint16"
    elif len(ids) and int(ids.max()) >= 2**31:
        raise ValueError(f"{files['bin']}: token id {int(ids.max())} does not fit Megatron's int32")
    else:
        dtype_name = "int32"
    lengths = np.diff(starts)
    if len(lengths) and int(lengths.max()) >= 2**31:
        raise ValueError(f"{files['bin']}: a document of {int(lengths.max())} tokens overflows Megatron's int32 "
                         "sequence lengths")
    itemsize = np.dtype(dtype_name).itemsize
    docs = len(lengths)
    header = MEGATRON_HEADER + struct.pack("<QBQQ", MEGATRON_VERSION, MEGATRON_DTYPE_CODES[dtype_name], docs, docs + 1)
    index = b"".join([header, lengths.astype("<i4").tobytes(), (starts[:-1] * itemsize).astype("<i8").tobytes(),
                      np.arange(docs + 1, dtype="<i8").tobytes()])
    storage.write_bytes(storage.join(root, files["bin"]), ids.astype(np.dtype(dtype_name).newbyteorder("<")).tobytes())
    storage.write_bytes(storage.join(root, files["idx"]), index)


def si_count(count: int, unit: str) -> str:
    """`count` with an SI prefix and three significant digits, as datatrove's metadata writes it
    (`humanize.metric`: 12 -> "12.0 T", 1234 -> "1.23 kT", 999_600 -> "1.00 MT"). Only informative:
    readers take the count from the line above."""
    exponent = int(math.floor(math.log10(count))) if count > 0 else 0
    value = count / 10 ** (exponent // 3 * 3)
    digits = max(0, 2 - exponent % 3)
    if round(value, digits) >= 10 ** (exponent % 3 + 1):  # a rounding carry: 999.6 k is 1.00 M
        exponent += 1
        value, digits = count / 10 ** (exponent // 3 * 3), max(0, 2 - exponent % 3)
    prefix = "" if exponent < 3 else "kMGTPEZYRQ"[exponent // 3 - 1]
    return f"{value:.{digits}f} {prefix}{unit}"


def read_part(root: str, entry: dict, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, int64 document starts) of one of the project's parts (`bin`, `idx` relative to `root`)."""
    tokens = np.frombuffer(storage.read_bytes(storage.join(root, entry["bin"])), dtype=dtype)
    starts = np.frombuffer(storage.read_bytes(storage.join(root, entry["idx"])), dtype="<i8")
    if len(starts) == 0 or starts[-1] != len(tokens):
        raise ValueError(f"{storage.join(root, entry['idx'])}: index does not end at the {len(tokens)} tokens of "
                         f"{entry['bin']}; rerun the tokenize stage")
    return tokens, starts


def write_parts(root: str, formats: Iterable[str], stem: str, tokens: np.ndarray, starts: np.ndarray,
                tokenizer_name: str) -> dict[str, dict[str, str]]:
    """One part in each of `formats`, each format's files under a folder named after it
    (`datatrove/<stem>.ds`): the tokenize stage keeps them beside its own `<stem>.bin`/`.idx`, which
    Megatron's names would overwrite. Returns fmt -> role -> relative path."""
    return {fmt: write_part(root, fmt, f"{fmt}/{stem}", tokens, starts, tokenizer_name) for fmt in formats}


def tokenizer_label(version: str | None) -> str:
    """The tokenizer name datatrove's metadata records: the tokenizer dataset's version, when known."""
    return f"llmpipe-tokenizer@{version}" if version else "llmpipe-tokenizer"


def training_order(tokens: dict, split: str) -> list[dict]:
    """The parts of `split` in the order a sequential reader should see them: the globally shuffled
    parts for the training split when the version has them (`tokenize.shuffle`), else the split's
    parts in shard order."""
    shuffled = tokens.get("shuffled")
    if split == "train" and shuffled:
        return list(shuffled["parts"])
    if split not in tokens["splits"]:
        raise KeyError(f"no split {split!r} (has {sorted(tokens['splits'])})")
    return list(tokens["splits"][split])


def export_tokens(tokens_uri: str, out_uri: str, fmt: str, splits: Iterable[str] | None = None) -> dict:
    """Write splits of a token dataset version (`T` or `T@version`) as `fmt` files under `out_uri`:
    `<split>/part-NNNNN.*` (`splits`: default every split the version has), one per part, numbered in
    training order (see `training_order`), so a reader that takes a folder's files in sorted order reads
    them in that order. Reads one part at a time. Returns {"format", "token_size", "splits": {split:
    {"files", "docs", "tokens"}}}."""
    from llm import versions
    from llm.errors import UserError
    from llm.train.data import read_token_version

    format_files(fmt, "")  # an unknown format fails before anything is read
    manifest = read_token_version(tokens_uri)
    tokens = manifest["tokens"]
    dtype = np.dtype({"uint16": "<u2", "uint32": "<u4"}[tokens["dtype"]])
    root = versions.split(tokens_uri)[0]
    name = tokenizer_label(manifest.get("parents", {}).get("tokenizer", {}).get("version"))
    report = {"format": fmt, "token_size": dtype.itemsize, "splits": {}}
    for split in tokens["splits"] if splits is None else splits:
        try:
            parts = training_order(tokens, split)
        except KeyError as exc:
            raise UserError(f"{tokens_uri}: {exc.args[0]}") from None
        if storage.list_files(storage.join(out_uri, split)):
            # A folder reader takes every file there: an earlier export's extra parts would be read too.
            raise UserError(f"{storage.join(out_uri, split)} already holds files; export into an empty folder")
        written, docs, count = [], 0, 0
        for i, entry in enumerate(parts):
            ids, starts = read_part(root, entry, dtype)
            written += write_part(out_uri, fmt, f"{split}/part-{i:05d}", ids, starts, name).values()
            docs, count = docs + len(starts) - 1, count + len(ids)
        report["splits"][split] = {"files": written, "docs": docs, "tokens": count}
    return report
