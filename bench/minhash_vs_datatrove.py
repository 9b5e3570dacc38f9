"""MinHash near-duplicate removal: llmpipe's stage on Ray against datatrove's four MinHash steps.

    .venv/bin/python bench/minhash_vs_datatrove.py                  # 200k documents, 2 cores
    .venv/bin/python bench/minhash_vs_datatrove.py --docs 20000     # a quicker run

Input: a corpus generated from the development data's real text with planted near-duplicates
(`llm.data.minhash.planted`: edits, insertions, shuffled paragraphs, boilerplate wrappers, chains of
edits), ~1.7 KB a document, written once as Parquet shards (llmpipe) and as the same shards in JSONL
(datatrove).

Same on both sides: word 5-gram shingles, 14 bands x 8 rows of 64-bit MinHash, the same cores (the
process is pinned before either starts; its children inherit it), as many input shards as tasks.
Where they differ:
- datatrove hashes shingles with sha1 (its xxhash option fails with current xxhash releases).
- datatrove's default English word tokenizer needs spaCy; it gets a plain whitespace tokenizer after
  its own `simplify_text` normalisation (cheaper than spaCy, so this favours datatrove).
- llmpipe verifies candidate pairs by exact Jaccard (threshold 0.8) and clusters without chaining;
  datatrove removes every band collision and unions clusters through chains.
- llmpipe's time excludes `ensure_ray`, which starts Ray and one worker process per core (a one-off per
  cluster; a pipeline's stages share them), but includes each worker's first import of the stage and
  load of its compiled code; datatrove's includes starting its worker processes, which it does per
  stage.

Quality is measured for both against one ground truth: exact Jaccard of word 5-gram shingle sets
(llmpipe's shingling). Recall: of all pairs inside a planted family with Jaccard >= 0.8 (brute force over
every pair of each family), the share where at least one copy was removed. Pairs across families are
independent windows of text; the test suite checks by full brute force on smaller corpora that none
reaches the threshold. Precision: of the pairs (removed document, document kept in its cluster), the
share with exact Jaccard >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

THRESHOLD = 0.8


def _write_inputs(root: Path, texts: list[str], shards: int) -> None:
    import pyarrow as pa

    from llm.data import schema
    from llm.data.dataset import Counts, load_record, write_manifest, write_record
    from llm.data.dataset import write_shard

    per = -(-len(texts) // shards)
    names = []
    (root / "jsonl").mkdir(parents=True)
    for s in range(shards):
        lo, hi = s * per, min(len(texts), (s + 1) * per)
        rows = [{"id": str(i), "text": texts[i], "source": "bench", "url": None, "created": None, "meta": "{}"}
                for i in range(lo, hi)]
        name = f"in-{s:05d}"
        rec = write_shard(str(root / "parquet"), name, [name], pa.Table.from_pylist(rows, schema.DOC_SCHEMA),
                          schema.reject_schema(schema.DOC_SCHEMA).empty_table(),
                          schema.QUARANTINE_SCHEMA.empty_table(), Counts(len(rows), len(rows)))
        write_record(str(root / "parquet"), rec)
        names.append(name)
        with open(root / "jsonl" / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps({"id": r["id"], "text": r["text"]}) + "\n")
    write_manifest(str(root / "parquet"), "bench", [load_record(str(root / "parquet"), n) for n in names])


def run_llmpipe(root: Path, cores: int) -> tuple[float, dict[int, int]]:
    """Seconds, and removed document -> keeper."""
    import pyarrow.parquet as pq

    from llm.config import MinHashConfig, ShardConfig
    from llm.data.minhash.stage import run_minhash_dedup
    from llm.executor import RayExecutor

    out = root / "llmpipe_out"
    shutil.rmtree(out, ignore_errors=True)
    cfg = MinHashConfig(keeper="first", url_dedup=False, bands=14, rows=8, ngram=5, threshold=THRESHOLD)
    start = time.perf_counter()
    run_minhash_dedup(str(root / "parquet"), str(out), cfg, ShardConfig(), RayExecutor())
    seconds = time.perf_counter() - start
    removed = {}
    for f in sorted((out / "rejected").glob("*.parquet")):
        t = pq.read_table(f, columns=["id", "detail"]).to_pylist()
        removed.update({int(r["id"]): int(json.loads(r["detail"])["keeper"]) for r in t})
    return seconds, removed


def run_datatrove(root: Path, cores: int, shards: int) -> tuple[float, dict[int, int]]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    work = root / "datatrove"
    shutil.rmtree(work, ignore_errors=True)
    # sha1 shingle hashing: datatrove 0.10.1's xxhash path passes str where current xxhash wants bytes.
    cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8,
                        hash_config=HashConfig(precision=64, hash_fc="sha1"))
    logs = str(work / "logs")

    def reader():
        return JsonlReader(str(root / "jsonl"), id_key="id", text_key="text", compression=None)

    stages = [
        LocalPipelineExecutor([reader(), MinhashDedupSignature(str(work / "sigs"), cfg, language=WhitespaceWords())],
                              tasks=shards, workers=cores, logging_dir=f"{logs}/1"),
        LocalPipelineExecutor([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=cfg)],
                              tasks=cfg.num_buckets, workers=cores, logging_dir=f"{logs}/2"),
        LocalPipelineExecutor([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=cfg,
                                                   save_cluster_id=True)],
                              tasks=1, workers=1, logging_dir=f"{logs}/3"),
        LocalPipelineExecutor([reader(), MinhashDedupFilter(str(work / "remove"), load_cluster_ids=True,
                                                            exclusion_writer=JsonlWriter(str(work / "removed"),
                                                                                         compression=None)),
                               JsonlWriter(str(work / "kept"), compression=None)],
                              tasks=shards, workers=cores, logging_dir=f"{logs}/4"),
    ]
    start = time.perf_counter()
    for stage in stages:
        stage.run()
    seconds = time.perf_counter() - start
    keeper_of_cluster, members = {}, []
    for folder, kept in (("kept", True), ("removed", False)):
        for f in sorted((work / folder).glob("*.jsonl")):
            for line in open(f, encoding="utf-8"):
                d = json.loads(line)
                cid = d["metadata"].get("minhash_cluster_id", -1)
                if kept and cid != -1:
                    keeper_of_cluster[cid] = int(d["id"])
                elif not kept:
                    members.append((int(d["id"]), cid))
    return seconds, {doc: keeper_of_cluster.get(cid, -1) for doc, cid in members}


def _whitespace_words_class():
    from datatrove.utils.word_tokenizers import WordTokenizer

    class _WhitespaceWords(WordTokenizer):
        """Whitespace split: datatrove's `simplify_text` has already removed punctuation and case."""

        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    return _WhitespaceWords


class WhitespaceWords:
    """Picklable factory of the tokenizer above (datatrove imports stay inside functions)."""

    def __new__(cls):
        return _whitespace_words_class()()


def ground_truth(texts: list[str], family: list[int]) -> set[tuple[int, int]]:
    """Every pair inside a planted family with exact Jaccard >= THRESHOLD."""
    from llm.data.minhash.shingles import jaccard, word_shingles

    members: dict[int, list[int]] = {}
    for i, f in enumerate(family):
        members.setdefault(f, []).append(i)
    pairs = set()
    for docs in members.values():
        if len(docs) < 2:
            continue
        b = word_shingles([texts[i] for i in docs], 5)
        for x in range(len(docs)):
            for y in range(x + 1, len(docs)):
                if jaccard(b.of(x), b.of(y)) >= THRESHOLD:
                    pairs.add((min(docs[x], docs[y]), max(docs[x], docs[y])))
    return pairs


def quality(texts: list[str], truth: set[tuple[int, int]], removed: dict[int, int]) -> tuple[float, float]:
    from llm.data.minhash.shingles import jaccard, word_shingles

    recall = sum(1 for a, b in truth if a in removed or b in removed) / max(1, len(truth))
    implied = [(d, k) for d, k in removed.items() if k >= 0]
    good = 0
    for start in range(0, len(implied), 5000):
        chunk = implied[start:start + 5000]
        b = word_shingles([texts[i] for pair in chunk for i in pair], 5)
        good += sum(jaccard(b.of(2 * n), b.of(2 * n + 1)) >= THRESHOLD for n in range(len(chunk)))
    # a removed document whose cluster kept nothing is a wrong removal too
    precision = good / max(1, len(removed))
    return recall, precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=200_000, help="corpus size (documents)")
    parser.add_argument("--cores", type=int, default=2, help="CPU cores for each side")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side (fastest kept)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="development data folder")
    args = parser.parse_args()
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    from llm.cluster import ensure_ray
    from llm.config import RayConfig
    from llm.data.minhash.planted import planted_corpus, word_pool

    corpus = planted_corpus(word_pool(Path(args.data)), args.docs, doc_words=200, seed=0)  # ~1.7 KB
    texts = corpus.texts
    shards = max(args.cores * 4, len(texts) // 10_000)
    root = Path(tempfile.mkdtemp(prefix="minhash-bench-"))
    try:
        _write_inputs(root, texts, shards)
        kb = sum(len(t.encode()) for t in texts) / len(texts) / 1024
        print(f"corpus: {len(texts)} documents, {kb:.2f} KB each on average, {shards} shards, {args.cores} cores")
        ensure_ray(RayConfig(num_cpus=args.cores, object_store_memory=256 * 1024 * 1024))
        truth = ground_truth(texts, corpus.family)
        print(f"ground truth: {len(truth)} planted pairs with Jaccard >= {THRESHOLD}")
        best = {"llmpipe": (float("inf"), {}), "datatrove": (float("inf"), {})}
        for _ in range(args.repeats):  # alternate sides; keep each side's fastest run
            for side, fn in (("llmpipe", lambda: run_llmpipe(root, args.cores)),
                             ("datatrove", lambda: run_datatrove(root, args.cores, shards))):
                seconds, removed = fn()
                if seconds < best[side][0]:
                    best[side] = (seconds, removed)
        rates = {}
        for side, (seconds, removed) in best.items():
            recall, precision = quality(texts, truth, removed)
            rates[side] = len(texts) / seconds
            print(f"{side:9s}: {len(texts)} docs in {seconds:7.1f} s = {rates[side]:8.0f} docs/s "
                  f"({rates[side] / args.cores:6.0f} per core); removed {len(removed)}; "
                  f"recall {recall:.4f}; precision {precision:.4f}")
        print(f"llmpipe/datatrove throughput ratio: {rates['llmpipe'] / rates['datatrove']:.2f}")
    finally:
        from llm.cluster import shutdown_ray

        shutdown_ray()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
