"""Encoding throughput: the tokenize stage on Ray against HF tokenizers' `encode_batch` and datatrove's DocumentTokenizer.

    .venv/bin/python bench/tokenize_vs_hf_datatrove.py                  # ~150 MB, 2 cores, ~12 min
    .venv/bin/python bench/tokenize_vs_hf_datatrove.py --mb 60 --repeat 3

Input: the real text of the development data folder (`--data`, default `../shared/data`: the books, the
reST sources of `html_dev.jsonl`, the news articles, the language-ID texts; ~2.5 MB in 711 texts),
repeated under distinct ids (each copy's last line marked with its number) to about `--mb` megabytes,
written as the project's document shards (`--shards` zstd Parquet files and the dataset manifest). A
byte-level BPE tokenizer (`library: hf`, `--vocab`) is trained once on them by the tokenizer stage,
in-process, outside the timings; its tokenizer.json is what every side encodes with. Each side reads
the shards' Parquet files and writes token files:
(a) llmpipe: `run_tokenize` (`TokenizeConfig()` as shipped: bos and eos around each document, 5% val
    and 5% test by text hash, per-token byte counts for those two) on a `RayExecutor`, Ray started by
    the stage inside the timing as a user's run starts it; one task per shard, each writing
    `<split>/<shard>.bin` (uint16 ids) and `.idx` (int64 document starts), the manifest last.
(b) hf: one process, per shard `pyarrow.parquet.read_table` then `Tokenizer.encode_batch` (its own
    threads over the pinned cores), bos/eos by a `TemplateProcessing` post-processor, the ids written
    as `<shard>.bin` (uint16) and `<shard>.idx` (int64 document starts and the total), the project's
    format.
(c) datatrove: `ParquetReader` + `DocumentTokenizer(tokenizer.json, eos_token="</s>",
    shuffle_documents=False)` in `LocalPipelineExecutor(tasks=cores, workers=cores)`, bos added by
    setting the step's `post_processor` (the attribute its tokenizer property reads) to the same
    template; it writes its `.ds` token files (uint16) and `.ds.index` document ends.
Where they differ: llmpipe also hashes every text for its split and counts bytes per token for the
val/test documents (the `.bytes` files); hf and llmpipe read a `<s>` typed in a text as text
(`encode_special_tokens`), datatrove's tokenizer as the special token, so a corpus with such strings
would count differently (this one has none: the counts are checked to agree).

Tokens per side are counted from its files on disk (and the id sum, order-free, checked too): they must
agree exactly. Timing: each side in its own subprocess, pinned to `--cores` CPUs by this script; sides
alternate over `--repeat` rounds, each side's fastest kept. With start-up: from spawning the
subprocess to its token files on disk (interpreter, imports, Ray and its workers, datatrove's worker
pool, the tokenizer load); steady: the same job again in that process into a fresh folder. Throughput
is tokens per second. The last line is the ratio llmpipe / the faster peer (tokens/s, with start-up).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sides import alternate, timed_child  # noqa: E402
from token_inputs import bench_parser, pin, real_texts, write_docs  # noqa: E402

SIDES = ["llmpipe", "hf", "datatrove"]
TARGET = 1.0  # llmpipe tokens/s over the faster peer's, at least


def template(path: str):
    """The post-processor both peers add bos and eos with (ids read from the tokenizer)."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    tk = Tokenizer.from_file(path)
    return TemplateProcessing(single="<s> $A </s>", special_tokens=[(t, tk.token_to_id(t)) for t in ("<s>", "</s>")])


def llmpipe_job(docs: str, tok_dir: str, cores: int):
    from llm.config import RayConfig, TokenizeConfig
    from llm.tokenizer.tokenize import run_tokenize
    from llm.executor import RayExecutor

    executor = RayExecutor(ray_config=RayConfig(num_cpus=cores, object_store_memory=256 * 1024 * 1024))

    def run(out: Path) -> None:
        run_tokenize(docs, tok_dir, str(out), TokenizeConfig(), executor)
    return run


def hf_job(docs: str, tokenizer_json: str):
    import numpy as np
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    def run(out: Path) -> None:
        out.mkdir(parents=True)
        tk = Tokenizer.from_file(tokenizer_json)
        tk.encode_special_tokens = True  # as llmpipe reads the text: `<s>` typed in it is text
        tk.post_processor = template(tokenizer_json)
        for shard in sorted(Path(docs).glob("*.parquet")):
            texts = pq.read_table(shard, columns=["text"]).column("text").to_pylist()
            ids = [np.asarray(e.ids, dtype=np.uint16) for e in tk.encode_batch(texts)]
            starts = np.zeros(len(ids) + 1, dtype=np.int64)
            np.cumsum([len(d) for d in ids], out=starts[1:])
            np.concatenate(ids).tofile(out / f"{shard.stem}.bin")
            starts.tofile(out / f"{shard.stem}.idx")
    return run


def datatrove_job(docs: str, tokenizer_json: str, cores: int):
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    def run(out: Path) -> None:
        step = DocumentTokenizer(str(out / "tokens"), tokenizer_name_or_path=tokenizer_json, eos_token="</s>",
                                 shuffle_documents=False, save_final_metadata=False)
        step.post_processor = template(tokenizer_json)  # bos too: its tokenizer property applies this template
        pipeline = [ParquetReader(docs, glob_pattern="*.parquet", recursive=False), step]
        LocalPipelineExecutor(pipeline, tasks=cores, workers=cores, logging_dir=str(out / "logs")).run()
    return run


def child(args: argparse.Namespace) -> None:
    root, cores = Path(args.root), int(args.cores)
    docs, tok_dir = str(root / "docs"), str(root / "tok")
    if args.side == "llmpipe":
        job = llmpipe_job(docs, tok_dir, cores)
    else:
        from llm.tokenizer.stage import tokenizer_uri

        tokenizer_json = tokenizer_uri(tok_dir)
        job = hf_job(docs, tokenizer_json) if args.side == "hf" else datatrove_job(docs, tokenizer_json, cores)
    timed_child(job, Path(args.out), args.spawned)


def count_tokens(side: str, out: Path) -> tuple[int, int, int]:
    """(tokens, documents, sum of the ids) of a side's token files."""
    import numpy as np

    pattern, index = {"datatrove": ("*.ds", "*.ds.index")}.get(side, ("*.bin", "*.idx"))
    tokens = total = 0
    for path in out.rglob(pattern):
        ids = np.fromfile(path, dtype=np.uint16)
        tokens, total = tokens + len(ids), total + int(ids.sum(dtype=np.int64))
    docs = sum(os.path.getsize(p) // 8 - (side != "datatrove") for p in out.rglob(index))
    return tokens, docs, total


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--mb", type=float, default=150, help="about how many megabytes of text to encode")
    parser.add_argument("--shards", type=int, default=8, help="document shards written")
    parser.add_argument("--vocab", type=int, default=16384, help="vocabulary of the byte-level BPE tokenizer")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.side:
        child(args)
        return
    cores = pin(args.cores)
    from llm.config import TokenizerConfig
    from llm.executor import LocalExecutor
    from llm.tokenizer.stage import run_tokenizer_training

    texts = real_texts(Path(args.data))
    copies = max(1, math.ceil(args.mb * 1e6 / sum(len(t.encode("utf-8")) for t in texts)))
    with tempfile.TemporaryDirectory(prefix="llmpipe-bench-") as tmp:
        root = Path(tmp)
        n_docs, n_bytes = write_docs(root / "docs", texts, copies, args.shards)
        run_tokenizer_training(str(root / "docs"), str(root / "tok"), TokenizerConfig(
            library="hf", model_type="bpe", vocab_size=args.vocab, sample_bytes=5_000_000, card_bytes=500_000),
            LocalExecutor())
        mb = n_bytes / 1e6
        print(f"input: {n_docs} documents, {mb:.1f} MB in {args.shards} Parquet shards ({copies} copies of "
              f"{args.data}'s real text); byte-level BPE tokenizer, vocabulary {args.vocab}; {cores} cores")
        print("timed: with start-up = spawn of each side's subprocess to its token files on disk (imports, Ray and "
              "its workers, datatrove's pool inside); steady = the same job again in that process")
        best = alternate(__file__, SIDES, root, args.repeat, "--root", str(root), "--cores", str(cores))
        counted = {side: count_tokens(side, best[side]["out"] / "first") for side in SIDES}
    rate, steady = {}, {}
    for side in SIDES:
        tokens, docs, _ = counted[side]
        t = best[side]
        rate[side], steady[side] = tokens / t["startup"], tokens / t["steady"]
        print(f"{side:>10}: {docs} docs, {tokens} tokens; with start-up {t['startup']:.2f} s = {rate[side]:,.0f} "
              f"tokens/s ({rate[side] / cores:,.0f} per core); steady {t['steady']:.2f} s = {steady[side]:,.0f} "
              f"tokens/s ({steady[side] / cores:,.0f} per core); {mb / t['steady']:.2f} MB/s")
    agree = len({c for c in counted.values()}) == 1
    print(f"tokens: {', '.join(f'{s} {counted[s][0]}' for s in SIDES)}; documents and id sums "
          f"{'agree' if agree else 'DIFFER'}: {'exactly the same counts' if agree else counted}")
    peer = max(("hf", "datatrove"), key=lambda s: rate[s])
    speer = max(("hf", "datatrove"), key=lambda s: steady[s])
    print(f"steady ratio llmpipe/{speer} (tokens/s): {steady['llmpipe'] / steady[speer]:.3f}")
    ratio = rate["llmpipe"] / rate[peer]
    print(f"ratio llmpipe/{peer} (tokens/s, with start-up; target at least {TARGET:g}: "
          f"{'met' if ratio >= TARGET else 'not met'}): {ratio:.3f}")


if __name__ == "__main__":  # datatrove's executor starts processes: this guard is required
    os.environ.setdefault("DO_NOT_TRACK", "1")
    sys.exit(main())
