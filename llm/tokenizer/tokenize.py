"""Shards to flat binary token files plus document indexes, split into train/validation/test by text hash.

Per shard and split: `<split>/<shard>.bin` holds the documents' token ids back to back (each document
as bos, tokens, eos), dtype uint16 when the vocabulary fits, else uint32; `<split>/<shard>.idx` holds the
int64 start offset of every document and the total (docs + 1 values). The training loader memory-maps
them. The split is a pure function of the document's text hash, so a document (or an exact copy of
it) never lands in two splits, whatever the sharding. Training validates and stops early on `val`;
the evaluate stage scores `test`, which nothing else reads.

The scored splits (`val`, `test`) also get `<split>/<shard>.bytes` (entry key `token_bytes`): per token,
the UTF-8 bytes of the document text it stands for (uint16, bos/eos 0; see `llm.tokenizer.token_bytes`),
so the bits per byte of any window are exact. Every part's entry has `text_bytes` (its documents' UTF-8
bytes), the token section `text_bytes` per split. Token datasets made before these existed have
neither, and are scored without bits per byte.

`cfg.formats` writes each part also as datatrove and Megatron token files (`llm.tokenizer.token_formats`),
listed in the shard's files and the part's entry (`formats`). `cfg.shuffle` adds the training split's
documents in one global seeded order (`tokens.shuffled`, `llm.tokenizer.shuffle`), from which the training
split's other formats are then written; the split itself keeps its per-shard parts.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from llm import storage
from llm.config import TokenizeConfig
from llm.data import schema
from llm import versions
from llm.tokenizer.shuffle import shuffle_split
from llm.data.dataset import Counts, ShardRecord, ShardTask, read_manifest, run_shard_stage, shard_identity
from llm.lineage import identity, of_input
from llm.tokenizer.base import Tokenizer, tokenizer_from_bytes
from llm.tokenizer.token_bytes import BYTES_DTYPE, TokenByteCounter
from llm.tokenizer.token_formats import tokenizer_label, write_parts

SPLITS = ("train", "val", "test")
#: Splits that are scored (validation, evaluation) and so carry per-token byte counts: the training
#: split, nearly all of the tokens, is never scored in bits per byte and keeps its size.
SCORED_SPLITS = ("val", "test")


def split_of(text_hash: str, val_fraction: float, test_fraction: float) -> str:
    """'val' for hashes in [0, val_fraction), 'test' for the next `test_fraction`, else 'train'.

    The val range is the one two-way splits used, so adding a test share moves documents out of train
    only, and a document's val assignment stays what it was."""
    position = int(text_hash[:8], 16) / 2**32
    if position < val_fraction:
        return "val"
    return "test" if position < val_fraction + test_fraction else "train"


@dataclass
class SplitDocuments:
    """One split's documents of a shard as stored: ids (bos, tokens, eos), their text's UTF-8 bytes in
    all, and for the scored splits the bytes per token (bos/eos 0)."""

    ids: list[list[int]] = field(default_factory=list)
    text_bytes: int = 0
    token_bytes: list[np.ndarray] | None = None


def encode_by_split(tok: Tokenizer, texts: list[str], cfg: TokenizeConfig,
                    counter: TokenByteCounter | None = None) -> dict[str, SplitDocuments]:
    """The texts encoded and sent to their splits; bytes per token are counted for the scored splits
    only (counting them for every document would add about a fifth to encoding's time)."""
    counter = counter or TokenByteCounter(tok)
    head, tail = [tok.bos_id] if cfg.prepend_bos else [], [tok.eos_id] if cfg.append_eos else []
    out = {s: SplitDocuments(token_bytes=[] if s in SCORED_SPLITS else None) for s in SPLITS}
    names = [split_of(schema.text_hash(t), cfg.val_fraction, cfg.test_fraction) for t in texts]
    encoded = tok.encode_batch(texts)
    scored = [i for i, name in enumerate(names) if name in SCORED_SPLITS]
    counts = dict(zip(scored, counter.counts_batch([texts[i] for i in scored], [encoded[i] for i in scored])))
    edge = np.zeros(len(head), np.int64), np.zeros(len(tail), np.int64)
    for i, (name, text, ids) in enumerate(zip(names, texts, encoded)):
        docs = out[name]
        docs.ids.append(head + ids + tail)
        docs.text_bytes += len(text.encode("utf-8"))
        if docs.token_bytes is not None:
            docs.token_bytes.append(np.concatenate([edge[0], counts[i], edge[1]]))
    return out


def _write_split(out_uri: str, split: str, shard: str, docs: SplitDocuments, dtype: np.dtype,
                 formats: tuple[str, ...] = (), tokenizer_name: str = "llmpipe-tokenizer") -> dict:
    lengths = np.fromiter((len(d) for d in docs.ids), dtype=np.int64, count=len(docs.ids))
    offsets = np.zeros(len(docs.ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # chain: no generator frame resumed per token (millions of them a shard).
    flat = np.fromiter(itertools.chain.from_iterable(docs.ids), dtype=dtype, count=int(offsets[-1]))
    bin_rel, idx_rel = f"{split}/{shard}.bin", f"{split}/{shard}.idx"
    sha = storage.write_bytes(storage.join(out_uri, bin_rel), flat.astype(dtype.newbyteorder("<")).tobytes())
    storage.write_bytes(storage.join(out_uri, idx_rel), offsets.astype("<i8").tobytes())
    entry = {"bin": bin_rel, "idx": idx_rel, "tokens": int(offsets[-1]), "docs": len(docs.ids), "sha256": sha,
             "text_bytes": docs.text_bytes}
    if formats:  # the same documents in other tools' files (llm.tokenizer.token_formats)
        entry["formats"] = write_parts(out_uri, formats, f"{split}/{shard}", flat, offsets, tokenizer_name)
    if docs.token_bytes is not None:
        counts = np.concatenate(docs.token_bytes)
        if len(counts) and counts.max() > np.iinfo(BYTES_DTYPE).max:
            raise ValueError(f"a token of shard {shard} stands for {int(counts.max())} bytes, "
                             f"more than {BYTES_DTYPE} holds")
        entry["token_bytes"] = f"{split}/{shard}.bytes"
        storage.write_bytes(storage.join(out_uri, entry["token_bytes"]), counts.astype(BYTES_DTYPE).tobytes())
    return entry


def run_tokenize(shards_uri: str, tokenizer_dir: str, out_uri: str, cfg: TokenizeConfig, executor) -> dict:
    """Encode the shards at `shards_uri` with the current tokenizer of `tokenizer_dir` into a new version
    of the token dataset `out_uri`. Each token shard is keyed by its input shard and the tokenizer's
    digest: a grown corpus adds token shards beside the old ones; a new tokenizer remakes them all, so
    ids of two vocabularies never mix in one version."""
    from llm.tokenizer.stage import tokenizer_uri

    started = time.time()
    shards_root = versions.split(shards_uri)[0]
    manifest = read_manifest(shards_uri)
    tok_manifest = read_manifest(tokenizer_dir)
    in_version, in_recipe = of_input(manifest)
    tok_version, tok_recipe = of_input(tok_manifest)
    ident = identity("tokenize", cfg, {"shards": in_version, "tokenizer": tok_version},
                     {"shards": in_recipe, "tokenizer": tok_recipe})
    reused = versions.reuse(out_uri, ident)
    if reused is not None:
        return reused
    model = storage.read_bytes(tokenizer_uri(versions.pinned(versions.split(tokenizer_dir)[0], tok_version)))
    tok = tokenizer_from_bytes(model)
    dtype = tok.token_dtype()
    tok_name = tokenizer_label(tok_version)

    def make_shard(task: ShardTask) -> ShardRecord:
        local_tok = tokenizer_from_bytes(model)
        table = storage.read_parquet(storage.join(shards_root, task.payload), columns=["text"])
        texts = table.column("text").to_pylist()
        by_split = encode_by_split(local_tok, texts, cfg)
        files, splits = {}, {}
        for split, docs in by_split.items():
            if docs.ids:
                # With the shuffle on, the training split's other formats are written in shuffled order.
                formats = () if split == "train" and cfg.shuffle else tuple(cfg.formats)
                entry = _write_split(out_uri, split, task.key, docs, dtype, formats, tok_name)
                files[f"{split}_bin"], files[f"{split}_idx"] = entry["bin"], entry["idx"]
                for fmt, roles in entry.get("formats", {}).items():
                    files.update({f"{split}_{fmt}_{role}": rel for role, rel in roles.items()})
                if "token_bytes" in entry:  # listed, so garbage collection keeps it with the version
                    files[f"{split}_bytes"] = entry["token_bytes"]
                splits[split] = entry
        counts = Counts(read=len(texts), kept=len(texts))
        tokens = sum(e["tokens"] for e in splits.values())
        return ShardRecord(name=task.name, inputs=[task.name], rows=len(texts), bytes=tokens * dtype.itemsize,
                           sha256=_combined_sha(splits), counts=counts, steps={"tokenize": counts}, files=files,
                           extra={"splits": splits})

    tasks = [ShardTask(s["name"], (s["name"],), s["files"]["data"],
                       ident.shard_key(input=shard_identity(s), tokenizer=tok_manifest["sha256"]))
             for s in manifest["shards"]]

    def token_section(manifest: dict) -> dict:
        shards = manifest["shards"]
        splits = {s: [sh["extra"]["splits"][s] for sh in shards if s in sh["extra"]["splits"]] for s in SPLITS}
        manifest["tokens"] = {
            "dtype": dtype.name, "vocab_size": tok.vocab_size, "bos_id": tok.bos_id, "eos_id": tok.eos_id,
            "pad_id": tok.pad_id, "splits": splits,
            "totals": {s: sum(e["tokens"] for e in entries) for s, entries in splits.items()},
            "text_bytes": {s: sum(e["text_bytes"] for e in entries) for s, entries in splits.items()},
            "formats": list(cfg.formats),
        }
        if cfg.shuffle and splits["train"]:
            shuffled = shuffle_split(out_uri, splits["train"], dtype, cfg.shuffle_seed, cfg.shuffle_bucket_bytes,
                                     executor, tuple(cfg.formats), tok_name)
            manifest.setdefault("files", {}).update(shuffled.pop("files"))  # kept by garbage collection
            manifest["tokens"]["shuffled"] = shuffled
        return manifest

    parents = {"shards": versions.pinned(shards_root, in_version),
               "tokenizer": versions.pinned(versions.split(tokenizer_dir)[0], tok_version)}
    return run_shard_stage(ident, out_uri, tasks, make_shard, executor, parents, started, extend=token_section)


def _combined_sha(splits: dict[str, dict]) -> str:
    return hashlib.sha256("".join(splits[s]["sha256"] for s in sorted(splits)).encode()).hexdigest()
