"""MinHash near-duplicate removal: llmpipe's stage (on Ray, and on its worker processes) against datatrove's
four MinHash steps.

    .venv/bin/python bench/minhash_vs_datatrove.py --repeats 2      # 20k documents, 2 cores, 5 seeds
    .venv/bin/python bench/minhash_vs_datatrove.py --docs 2000 --seeds 1   # a smoke run
    .venv/bin/python bench/minhash_vs_datatrove.py --bands 16 --rows 7     # another banding, both sides

Input: `llm.data.minhash.planted.distinct_corpus`: bases are non-overlapping slices of the distinct real
texts of the development data (books, papers, documentation sources, e-mails, news, chat responses;
each text read once, so no two bases share a window of a common pool), shortened so the real text covers
the bases wanted (~45 words at 20k documents); 40% of the documents are planted copies in families of
1-4 copies, made by word substitutions, deletions, insertions, all three, or a chain of such edits, at
rates drawn up to 15% (copy kinds and rates are printed). The corpus is written once as an llmpipe
document dataset (zstd Parquet shards and a manifest); **both sides read those same Parquet files**
(datatrove through its `ParquetReader`) and **both write Parquet** (llmpipe its kept and `rejected/`
shards; datatrove its `ParquetWriter` for kept and removed documents).

llmpipe runs twice, once per `ray.executor`: `llmpipe-ray` (`RayExecutor`) and `llmpipe-processes`
(`ProcessExecutor`: worker processes forked from the side's process, one per core); both must remove the
same documents (asserted). Each side runs in its own subprocess, spawned by this script after it has
pinned itself to `--cores` cores (children inherit the affinity), sides alternating over `--repeats`
rounds, fastest kept:
- **with start-up**: from spawning the subprocess to the first run's outputs being on disk. llmpipe's
  includes the interpreter and imports, and on Ray `ensure_ray` (starting Ray and one worker per core)
  and the workers' first import of the stage, with processes the fork of the workers at the stage's start
  and their first use of the compiled loops; datatrove's the interpreter, imports and the executors'
  worker pools, which datatrove starts per step.
- **steady**: the same job run a second time in that subprocess into a fresh output folder (llmpipe's
  Ray or worker processes already up; datatrove starts its pools again, as it does for every run).
Both sides get the same first run, so warm-up is symmetric. llmpipe's compiled loops are built beside
the code on their first-ever use, once per installation (an extension from numba's ahead-of-time
compiler, `llm/aot.py`, or numba's cache): on a fresh checkout the first round's llmpipe run also builds
them, so use `--repeats 2` (or any earlier run) for figures.

Same on both sides: word 5-gram shingles, 14 bands x 8 rows of 64-bit MinHash (`--bands`, `--rows`), as
many input shards as tasks, MinHash seed 1 for the timed runs. Where they differ:
- datatrove hashes shingles with sha1 (its xxhash option fails with current xxhash releases).
- datatrove normalises with its `simplify_text` (lower case, punctuation removed, digits folded) and
  then splits on whitespace (its default English tokenizer needs spaCy; whitespace is cheaper, which
  favours datatrove); llmpipe lower-cases and takes runs of letters and digits as words.
- llmpipe verifies candidate pairs by exact Jaccard (threshold 0.8) and clusters without chaining;
  datatrove removes every band collision and unions clusters through chains.

Quality, both sides against one ground truth: exact Jaccard >= 0.8 of **llmpipe's shingle sets** (word
5-grams of lower-cased letter/digit runs, `llm.data.minhash.shingles.word_shingles`); the same figures
against datatrove's shingle sets (word 5-grams of its `simplify_text`, split on whitespace) are printed
in brackets, and the truth's own counts for both. The truth set is
checked over (a) every pair inside each planted family, (b) every pair either tool reports (a removed
document with the document kept in its cluster), (c) with `--brute-force` (default up to 50k documents)
every pair of the corpus by a sparse product of the shingle incidence matrix; and a random sample of
pairs neither tool reports is checked and its hits printed (an estimate of pairs both miss). Recall: of
the truth pairs, the share where at least one document was removed. Precision: of the removed
documents, the share whose kept cluster member is a truth pair with it (a removal whose cluster kept
nothing counts as wrong). Which near-threshold pairs LSH misses is chance: a different MinHash seed
misses different ones, so with `--seeds N` (default 5) both sides (llmpipe on its worker processes) run
once more per seed 2..N, untimed, and recall and precision are printed as mean (min-max) over the
seeds, on both shinglings; the truth set covers the pairs every seed reported. The ratio line
(throughput with start-up of the faster llmpipe executor over datatrove's, naming the executor) is last.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from sides import spawn_side  # noqa: E402

THRESHOLD = 0.8
NGRAM = 5


def write_inputs(root: Path, texts: list[str], shards: int) -> None:
    """`texts` as an llmpipe document dataset in `root`: Parquet shards `in-NNNNN.parquet`, ids = positions."""
    import pyarrow as pa

    from llm.data import schema
    from llm.data.dataset import Counts, load_record, write_manifest, write_record, write_shard

    per = -(-len(texts) // shards)
    names = []
    for s in range(shards):
        lo, hi = s * per, min(len(texts), (s + 1) * per)
        rows = [{"id": str(i), "text": texts[i], "source": "bench", "url": None, "created": None, "meta": "{}"}
                for i in range(lo, hi)]
        name = f"in-{s:05d}"
        rec = write_shard(str(root), name, [name], pa.Table.from_pylist(rows, schema.DOC_SCHEMA),
                          schema.reject_schema(schema.DOC_SCHEMA).empty_table(),
                          schema.QUARANTINE_SCHEMA.empty_table(), Counts(len(rows), len(rows)))
        write_record(str(root), rec)
        names.append(name)
    write_manifest(str(root), "bench", [load_record(str(root), n) for n in names])


# --- the two sides, each run in its own subprocess ------------------------------------------------------

LLMPIPE_SIDES = {"llmpipe-ray": "ray", "llmpipe-processes": "processes"}  # side -> `ray.executor`


def llmpipe_job(cores: int, executor: str, bands: int, rows: int, seed: int = 1):
    """Start-up (imports; for `ray`, Ray and its workers), then a function running the stage into a
    folder on that executor (`processes`: its workers fork when the first run's stage starts)."""
    from llm.config import MinHashConfig, RayConfig, ShardConfig
    from llm.data.minhash.stage import run_minhash_dedup
    from llm.executor import ProcessExecutor, RayExecutor

    ray_cfg = RayConfig(num_cpus=cores, object_store_memory=256 * 1024 * 1024, executor=executor)
    if executor == "ray":
        from llm.cluster import ensure_ray

        ensure_ray(ray_cfg)
        ex = RayExecutor()
    else:
        ex = ProcessExecutor(ray_config=ray_cfg)
    cfg = MinHashConfig(keeper="first", url_dedup=False, bands=bands, rows=rows, ngram=NGRAM, threshold=THRESHOLD,
                        seed=seed)

    def run(inputs: Path, out: Path, shards: int) -> None:
        run_minhash_dedup(str(inputs), str(out), cfg, ShardConfig(), ex)

    return run


def datatrove_job(cores: int, bands: int, rows: int, seed: int = 1):
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.hashing import HashConfig

    # sha1 shingle hashing: datatrove 0.10.1's xxhash path passes str where current xxhash wants bytes.
    cfg = MinhashConfig(n_grams=NGRAM, num_buckets=bands, hashes_per_bucket=rows, seed=seed,
                        hash_config=HashConfig(precision=64, hash_fc="sha1"))

    def run(inputs: Path, out: Path, shards: int) -> None:
        def reader():
            return ParquetReader(str(inputs), glob_pattern="in-*.parquet", recursive=False, id_key="id",
                                 text_key="text")

        work, logs = out / "work", str(out / "logs")
        stages = [
            LocalPipelineExecutor([reader(), MinhashDedupSignature(str(work / "sigs"), cfg, language=WhitespaceWords())],
                                  tasks=shards, workers=cores, logging_dir=f"{logs}/1"),
            LocalPipelineExecutor([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=cfg)],
                                  tasks=cfg.num_buckets, workers=cores, logging_dir=f"{logs}/2"),
            LocalPipelineExecutor([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=cfg,
                                                       save_cluster_id=True)],
                                  tasks=1, workers=1, logging_dir=f"{logs}/3"),
            LocalPipelineExecutor([reader(), MinhashDedupFilter(str(work / "remove"), load_cluster_ids=True,
                                                                exclusion_writer=ParquetWriter(str(out / "removed"))),
                                   ParquetWriter(str(out / "kept"))],
                                  tasks=shards, workers=cores, logging_dir=f"{logs}/4"),
        ]
        for stage in stages:
            stage.run()

    return run


def child(args: argparse.Namespace) -> None:
    """One side in this subprocess: the first run timed from the parent's spawn, then a steady run."""
    if args.side in LLMPIPE_SIDES:
        run = llmpipe_job(args.cores, LLMPIPE_SIDES[args.side], args.bands, args.rows, args.seed)
    else:
        run = datatrove_job(args.cores, args.bands, args.rows, args.seed)
    out = Path(args.out)
    run(Path(args.inputs), out / "first", args.shards)
    first = time.monotonic() - args.spawned  # CLOCK_MONOTONIC: the same clock as the parent's
    t0 = time.monotonic()
    if not args.once:
        run(Path(args.inputs), out / "steady", args.shards)
    steady = time.monotonic() - t0
    (out / "times.json").write_text(json.dumps({"startup": first, "steady": steady}))
    if args.side == "llmpipe-ray":
        from llm.cluster import shutdown_ray

        shutdown_ray()


def spawn(side: str, inputs: Path, out: Path, cores: int, shards: int, bands: int, rows: int, seed: int = 1,
          once: bool = False) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    return spawn_side(__file__, side, out, "--inputs", str(inputs), "--cores", str(cores), "--shards", str(shards),
                      "--bands", str(bands), "--rows", str(rows), "--seed", str(seed), *(["--once"] if once else []))


# --- outputs and quality --------------------------------------------------------------------------------

def removed_llmpipe(out: Path) -> dict[int, int]:
    """Removed document -> the keeper it was removed for, from llmpipe's `rejected/` shards."""
    import pyarrow.parquet as pq

    removed = {}
    for f in sorted(out.rglob("rejected/*.parquet")):
        for r in pq.read_table(f, columns=["id", "detail"]).to_pylist():
            removed[int(r["id"])] = int(json.loads(r["detail"])["keeper"])
    return removed


def removed_datatrove(out: Path) -> dict[int, int]:
    """Removed document -> the document its cluster kept (-1 when it kept none), from datatrove's outputs."""
    import pyarrow.parquet as pq

    keeper_of_cluster, members = {}, []
    for folder, kept in (("kept", True), ("removed", False)):
        for f in sorted((out / folder).glob("*.parquet")):
            for d in pq.read_table(f, columns=["id", "metadata"]).to_pylist():
                cid = (d["metadata"] or {}).get("minhash_cluster_id", -1)
                if kept and cid != -1:
                    keeper_of_cluster[cid] = int(d["id"])
                elif not kept:
                    members.append((int(d["id"]), cid))
    return {doc: keeper_of_cluster.get(cid, -1) for doc, cid in members}


class Truth:
    """Exact Jaccard of shingle sets, for any pair, from one shingling of the corpus: llmpipe's (word
    5-grams of lower-cased letter/digit runs) or datatrove's (word 5-grams of `simplify_text` split on
    whitespace, as its signature step with the whitespace tokenizer makes them)."""

    def __init__(self, texts: list[str], shingling: str = "llmpipe"):
        import numpy as np

        if shingling == "llmpipe":
            from llm.data.minhash.shingles import word_shingles

            self.batch = word_shingles(texts, NGRAM)
            self.sets = [frozenset(self.batch.of(i).tolist()) for i in range(len(texts))]
            return
        from types import SimpleNamespace

        from datatrove.utils.text import TextNormConfig, ngrams, simplify_text

        norm = TextNormConfig()  # datatrove's MinhashConfig default
        self.sets = [frozenset(hash(" ".join(g)) for g in ngrams(simplify_text(t, norm).split(), NGRAM)) for t in texts]
        counts = np.array([len(x) for x in self.sets], np.int64)
        hashes = np.fromiter((h for x in self.sets for h in x), np.int64, int(counts.sum()))
        self.batch = SimpleNamespace(hashes=hashes, counts=counts, offsets=np.concatenate([[0], np.cumsum(counts)]))

    def jaccard(self, i: int, j: int) -> float:
        a, b = self.sets[i], self.sets[j]
        return len(a & b) / max(1, len(a | b))


def ground_truth(truth: Truth, family: list[int], reported: set[tuple[int, int]],
                 brute_force: bool) -> tuple[set[tuple[int, int]], dict[str, int]]:
    """Pairs with exact Jaccard >= THRESHOLD among in-family pairs, reported pairs and (brute force) all."""
    from llm.data.minhash.planted import similar_pairs

    members: dict[int, list[int]] = {}
    for i, f in enumerate(family):
        members.setdefault(f, []).append(i)
    in_family = {(a, b) for docs in members.values() for x, a in enumerate(sorted(docs)) for b in sorted(docs)[x + 1:]}
    found = {p for p in in_family if truth.jaccard(*p) >= THRESHOLD}
    cross_reported = {p for p in reported - in_family if truth.jaccard(*p) >= THRESHOLD}
    counts = {"in-family pairs checked": len(in_family), "in-family >= t": len(found),
              "reported pairs checked": len(reported), "reported across families >= t": len(cross_reported)}
    found |= cross_reported
    if brute_force:
        every = {p for p, j in similar_pairs(truth.batch, THRESHOLD).items()}
        counts["brute force: all pairs >= t"] = len(every)
        counts["brute force: across families, unreported"] = len(every - found)
        found |= every
    return found, counts


def sample_unreported(truth: Truth, family: list[int], reported: set[tuple[int, int]], n: int,
                      seed: int = 1) -> tuple[int, int]:
    """(pairs checked, pairs >= THRESHOLD) among `n` random pairs of different families that no tool reported."""
    import numpy as np

    rng = np.random.default_rng(seed)
    docs = len(family)
    checked = hits = 0
    for a, b in rng.integers(0, docs, (n, 2)).tolist():
        if a == b or family[a] == family[b] or (min(a, b), max(a, b)) in reported:
            continue
        checked += 1
        hits += truth.jaccard(a, b) >= THRESHOLD
    return checked, hits


def quality(truth: Truth, found: set[tuple[int, int]], removed: dict[int, int]) -> tuple[float, float]:
    recall = sum(1 for a, b in found if a in removed or b in removed) / max(1, len(found))
    good = sum(1 for d, k in removed.items() if k >= 0 and (min(d, k), max(d, k)) in found)
    return recall, good / max(1, len(removed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20_000, help="corpus size (documents)")
    parser.add_argument("--cores", type=int, default=2, help="CPU cores for each side")
    parser.add_argument("--repeats", type=int, default=1, help="rounds, sides alternating (fastest kept)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="development data folder")
    parser.add_argument("--brute-force", choices=["auto", "yes", "no"], default="auto",
                        help="check every pair of the corpus (auto: up to 50k documents)")
    parser.add_argument("--sample", type=int, default=200_000, help="random unreported pairs checked")
    parser.add_argument("--bands", type=int, default=14, help="LSH bands, both sides")
    parser.add_argument("--rows", type=int, default=8, help="signature values per band, both sides")
    parser.add_argument("--seeds", type=int, default=5,
                        help="MinHash seeds for quality (1 = the timed runs' only; others run once each, untimed)")
    # subprocess side (internal)
    parser.add_argument("--side", choices=[*LLMPIPE_SIDES, "datatrove"], help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--spawned", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if args.side:
        child(args)
        return
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))  # both sides inherit it

    from llm.data.minhash.planted import distinct_corpus

    corpus = distinct_corpus(Path(args.data), args.docs, seed=0)
    texts = corpus.texts
    if len(texts) < 0.95 * args.docs:
        print(f"note: the real text covers only {len(texts)} documents of {corpus.doc_words} words "
              f"({args.docs} asked); running on those")
    shards = max(args.cores * 4, len(texts) // 10_000)
    root = Path(tempfile.mkdtemp(prefix="minhash-bench-"))
    try:
        write_inputs(root / "input", texts, shards)
        kb = sum(len(t.encode()) for t in texts) / len(texts) / 1024
        kinds = Counter(corpus.kind)
        print(f"corpus: {len(texts)} documents ({kinds['base']} distinct real-text slices of up to {corpus.doc_words} "
              f"words, {kb:.2f} KB on average), {shards} Parquet shards, {args.cores} cores")
        print("planted copies: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()) if k != "base")
              + " (edit rate uniform in [0, 0.15]; chains [0, 0.05] a step)")
        print("timed: with start-up = spawn of each side's subprocess to its outputs on disk (imports, Ray and its "
              "workers / the worker processes / datatrove's worker pools inside); steady = the same job again in "
              "that process")
        sides = [*LLMPIPE_SIDES, "datatrove"]
        best: dict[str, dict[str, float]] = {}
        for r in range(args.repeats):
            for side in sides:
                t = spawn(side, root / "input", root / f"{side}-{r}", args.cores, shards, args.bands, args.rows)
                print(f"  round {r + 1} {side:17s}: with start-up {t['startup']:7.2f} s, steady {t['steady']:7.2f} s",
                      flush=True)
                if side not in best or t["startup"] < best[side]["startup"]:
                    best[side] = {**t, "round": r}
        def removed_of(side: str, out: Path) -> dict[int, int]:
            return (removed_llmpipe if side in LLMPIPE_SIDES else removed_datatrove)(out)

        removed = {side: removed_of(side, root / f"{side}-{best[side]['round']}" / "first") for side in sides}
        assert removed["llmpipe-ray"] == removed["llmpipe-processes"], "the two llmpipe executors removed different documents"
        # Quality under other MinHash seeds (untimed, one run each): LSH misses are chance events, so one
        # seed's recall differs from the next by a few pairs.
        by_seed = {side: [removed[side]] for side in ("llmpipe-processes", "datatrove")}
        for seed in range(2, args.seeds + 1):
            for side in by_seed:
                out = root / f"{side}-seed{seed}"
                spawn(side, root / "input", out, args.cores, shards, args.bands, args.rows, seed, once=True)
                by_seed[side].append(removed_of(side, out / "first"))
        reported = {(min(d, k), max(d, k)) for runs in by_seed.values() for run in runs for d, k in run.items() if k >= 0}
        brute = args.brute_force == "yes" or (args.brute_force == "auto" and len(texts) <= 50_000)
        scores: dict[str, dict[str, tuple[float, float]]] = {}
        seed_scores: dict[str, dict[str, list[tuple[float, float]]]] = {}
        for shingling in ("llmpipe", "datatrove"):
            truth = Truth(texts, shingling)
            found, counts = ground_truth(truth, corpus.family, reported, brute)
            checked, hits = sample_unreported(truth, corpus.family, reported, args.sample)
            print(f"ground truth on {shingling}'s shingling (exact Jaccard >= {THRESHOLD} of word {NGRAM}-gram sets): "
                  f"{len(found)} pairs; " + "; ".join(f"{k} {v}" for k, v in counts.items())
                  + f"; random unreported cross-family pairs: {checked} checked, {hits} at >= {THRESHOLD}")
            scores[shingling] = {side: quality(truth, found, removed[side]) for side in removed}
            seed_scores[shingling] = {side: [quality(truth, found, run) for run in runs] for side, runs in by_seed.items()}
        rates = {}
        for side in sides:
            t = best[side]
            recall, precision = scores["llmpipe"][side]
            other = scores["datatrove"][side]
            rates[side] = len(texts) / t["startup"]
            print(f"{side:17s}: {len(texts)} docs; with start-up {t['startup']:7.2f} s = {rates[side]:8.0f} docs/s "
                  f"({rates[side] / args.cores:6.0f} per core); steady {t['steady']:7.2f} s = "
                  f"{len(texts) / t['steady']:8.0f} docs/s; removed {len(removed[side])}; "
                  f"recall {recall:.4f}; precision {precision:.4f} "
                  f"(on datatrove's shingling: {other[0]:.4f}, {other[1]:.4f})")
        if args.seeds > 1:
            for side in by_seed:
                parts = []
                for shingling in ("llmpipe", "datatrove"):
                    rec, prec = zip(*seed_scores[shingling][side])
                    parts.append(f"on {shingling}'s shingling recall {sum(rec) / len(rec):.4f} ({min(rec):.4f}-{max(rec):.4f}), "
                                 f"precision {sum(prec) / len(prec):.4f} ({min(prec):.4f}-{max(prec):.4f})")
                print(f"{side:17s} over seeds 1-{args.seeds}: mean (min-max) " + "; ".join(parts))
        for side in LLMPIPE_SIDES:
            print(f"steady throughput ratio {side}/datatrove: {best['datatrove']['steady'] / best[side]['steady']:.2f}")
        fastest = max(LLMPIPE_SIDES, key=lambda side: rates[side])
        print(f"llmpipe/datatrove throughput ratio (with start-up, ray.executor={LLMPIPE_SIDES[fastest]}): "
              f"{rates[fastest] / rates['datatrove']:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


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


if __name__ == "__main__":
    main()
