"""Incremental refresh against a full run of the data stages: no new input, and 10% new input.

    .venv/bin/python bench/refresh_vs_full.py                 # 600 crawled pages + 1500 stdlib files
    .venv/bin/python bench/refresh_vs_full.py --pages 200 --code-files 300

Input, built once before anything is timed: pages crawled from a local pydoc server into WARC files of
10 pages, and a copy of standard-library source files. The first 90% of each (in file-name order) is the
corpus; the last 10% is what a refresh finds new.

Timed, each as one call of the data flow (`llmpipe data`: ingest, exact and MinHash dedup, shard,
tokenizer, tokenize; the crawl is not configured, the sources are the two folders), in this process:

1. full: a fresh work directory over the corpus;
2. no-op refresh: the same flow again, nothing changed;
3. 10% refresh: the new files copied into the source folders, the same flow again.

Start-up is treated alike: before any timer, one untimed warm-up run on a small separate corpus starts
Ray, Prefect's temporary API and the imports that every run then shares; MLflow tracking (SQLite under
each work directory) is on for every run. The process is pinned to the same cores throughout. Each case is
repeated `--repeat` times on fresh copies and the fastest kept. Targets: no-op at most 5% of the full
run, 10% new input at most 25%. The last line is the 10%-refresh ratio.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_input(root: Path, pages: int, code_files: int) -> tuple[list[Path], list[Path]]:
    """(WARC files, code files) sorted by name, written under `root`."""
    from llm.config import CrawlConfig
    from llm.data.crawl import crawl, pydoc_server

    warc = root / "all-warc"
    with pydoc_server() as url:
        crawl(CrawlConfig(max_pages=pages, records_per_warc=10, rate_limit_per_s=500, concurrency=2), url, str(warc))
    from llm.data.readers import STDLIB_EXCLUDED_DIRS

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(p for p in stdlib.rglob("*.py")
                     if not STDLIB_EXCLUDED_DIRS.intersection(p.relative_to(stdlib).parts[:-1]))[:code_files]
    code = root / "all-code"
    code.mkdir()
    for p in sources:  # flattened, so a name sorts by where it was
        shutil.copyfile(p, code / "__".join(p.relative_to(stdlib).parts))
    return sorted(warc.glob("*.warc.gz")), sorted(code.glob("*.py"))


def _copy(files: list[Path], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, dest / f.name)


def _config(work: Path, warc: Path, code: Path):
    from llm.config import build_config

    return build_config({}, [
        f"work_dir={work}", "name=refresh-bench",
        f"data.sources=[{{kind: warc, name: web, uri: '{warc}'}}, {{kind: code, name: code, uri: '{code}', files_per_shard: 20}}]",
        "data.shard.target_bytes=1000000", "tokenizer.vocab_size=2000", "tokenizer.sample_bytes=2000000",
        "ray.object_store_memory=268435456",
    ])


def _timed(cfg) -> tuple[float, dict]:
    """One `llmpipe data` run as the command makes it (its Prefect settings), in this process."""
    from flows.pipeline import data_refresh, local_run_settings

    start = time.perf_counter()
    with local_run_settings():
        result = data_refresh(cfg)
    return time.perf_counter() - start, result["stages"]


def _seconds(summary: dict) -> float:
    from llm import versions

    return versions.run_info(summary["uri"], summary["version"]).get("seconds", 0.0)


def one_round(root: Path, warcs: list[Path], code: list[Path]) -> dict[str, float]:
    cut_w, cut_c = int(len(warcs) * 0.9), int(len(code) * 0.9)
    warc_dir, code_dir = root / "warc", root / "code"
    _copy(warcs[:cut_w], warc_dir)
    _copy(code[:cut_c], code_dir)
    cfg = _config(root / "work", warc_dir, code_dir)
    full, stages = _timed(cfg)
    docs = stages["ingest"]["counts"]["read"]
    noop, again = _timed(cfg)
    assert all(s["reused"] for s in again.values()), "no-op refresh reran a stage"
    _copy(warcs[cut_w:], warc_dir)
    _copy(code[cut_c:], code_dir)
    grown, after = _timed(cfg)
    added = after["ingest"]["counts"]["read"] - docs
    print(f"  full {full:7.1f} s ({docs} documents) | no-op {noop:5.1f} s | +{added} documents {grown:6.1f} s",
          flush=True)
    print("  stage seconds, full / refresh:", ", ".join(
        f"{name} {_seconds(stages[name]):.1f}/{_seconds(after[name]):.1f}" for name in stages), flush=True)
    return {"full": full, "noop": noop, "grown": grown, "docs": docs, "added": added}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=600)
    parser.add_argument("--code-files", type=int, default=1500)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="llmpipe-bench-prefect-"))
    from llm.cluster import ensure_ray
    from llm.config import RayConfig

    ensure_ray(RayConfig(num_cpus=args.cores, object_store_memory=256 << 20))
    base = Path(tempfile.mkdtemp(prefix="llmpipe-refresh-bench-"))
    try:
        warcs, code = build_input(base, args.pages, args.code_files)
        print(f"input: {len(warcs)} WARC files, {len(code)} code files; {args.cores} cores")
        warm = base / "warm"  # untimed: Ray workers, Prefect's API, imports
        _copy(warcs[:2], warm / "warc")
        _copy(code[:20], warm / "code")
        _timed(_config(warm / "work", warm / "warc", warm / "code"))
        rounds = [one_round(base / f"round{i}", warcs, code) for i in range(args.repeat)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    best = {k: min(r[k] for r in rounds) for k in ("full", "noop", "grown")}
    print(f"full run        {best['full']:7.1f} s")
    print(f"no-op refresh   {best['noop']:7.1f} s   ratio {best['noop'] / best['full']:.3f} (target <= 0.05)")
    print(f"10% new input   {best['grown']:7.1f} s   ratio {best['grown'] / best['full']:.3f} (target <= 0.25)")
    print(f"refresh/full: {best['grown'] / best['full']:.3f}")


if __name__ == "__main__":
    main()
