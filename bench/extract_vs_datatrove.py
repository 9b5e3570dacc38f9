"""HTML extraction throughput: llmpipe's per-document pass against datatrove's, on the same WARC files.

    .venv/bin/python bench/extract_vs_datatrove.py                # crawl ~200 local pydoc pages first
    .venv/bin/python bench/extract_vs_datatrove.py --warc DIR     # or use existing WARC files

(a) llmpipe: `read_unit` + `ExtractStep` + `NormalizeStep` over each WARC file, in this process.
(b) datatrove: `WarcReader` + `Trafilatura` (+ `SymbolLinesFormatter`, its offline normalizer) in a
    `LocalPipelineExecutor(tasks=1, workers=1)`; its extractor runs in a child process.
Each side runs `--repeat` times, alternating, and its fastest run counts. Both are pinned to the same
single CPU and use the same trafilatura options (recall over precision, tables kept, no comments, no
trafilatura dedup). Normalization differs a little: llmpipe applies NFC and whitespace/control-character
clean-up, datatrove removes symbol-only lines (its FTFY formatter needs `ftfy`, not installed); both
cost well under 1% of the time next to extraction. The last line is the throughput ratio
llmpipe/datatrove in HTML documents per second per core (above 1: llmpipe is faster).
datatrove's WarcReader needs `faust-cchardet` and `python-magic` (libmagic).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path


def pin_to_one_core() -> int:
    """Run this process (and the children it starts) on one CPU so both sides get the same core count."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    return 1


def build_input(args: argparse.Namespace, tmp: str) -> Path:
    if args.warc:
        return Path(args.warc).resolve()
    from llm.config import CrawlConfig
    from llm.data.crawl import crawl, pydoc_server

    out = Path(tmp) / "crawl"
    with pydoc_server() as url:
        t0 = time.perf_counter()
        result = crawl(CrawlConfig(max_pages=args.pages, records_per_warc=50, rate_limit_per_s=1000), url, str(out))
    print(f"input: crawled {result.pages_fetched} pages of {url} into {len(result.warc_files)} WARC files "
          f"({result.bytes / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f}s")
    return out


def run_llmpipe(warc_dir: Path) -> tuple[int, int, float]:
    """(HTML documents read, documents kept, seconds) for llmpipe's fused per-document pass."""
    import pyarrow as pa

    from llm.config import ExtractConfig, NormalizeConfig, SourceConfig
    from llm.data import schema
    from llm.data.extract import ExtractStep, extract_html
    from llm.data.normalize import NormalizeStep
    from llm.data.readers import is_quarantine, plan_inputs, read_unit

    extract_html("<html><body><p>warm up</p></body></html>", ExtractConfig())  # lazy imports out of the timing
    steps = [ExtractStep(ExtractConfig()), NormalizeStep(NormalizeConfig())]
    t0 = time.perf_counter()
    html = kept = 0
    for unit in plan_inputs([SourceConfig(kind="warc", name="web", uri=str(warc_dir), glob="*.warc.gz")], ""):
        batch: list[dict] = []
        for rec in read_unit(unit):
            if not is_quarantine(rec):
                batch.append(rec)
        raw = pa.Table.from_pylist(batch, schema.RAW_SCHEMA)
        html += sum(1 for r in batch if r["content_type"] == "html")
        docs = raw
        for step in steps:
            docs = step.apply(docs).kept
        kept += docs.num_rows
    return html, kept, time.perf_counter() - t0


def run_datatrove(warc_dir: Path, tmp: str) -> tuple[int, int, float]:
    """(HTML documents read, documents kept, seconds) for datatrove's executor on the same files."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.formatters import SymbolLinesFormatter
    from datatrove.pipeline.readers import WarcReader

    pipeline = [
        WarcReader(str(warc_dir), glob_pattern="*.warc.gz"),
        Trafilatura(favour_precision=False, favor_recall=True, include_tables=True, deduplicate=False, timeout=5.0),
        SymbolLinesFormatter(),
    ]
    executor = LocalPipelineExecutor(pipeline, tasks=1, workers=1, logging_dir=str(Path(tmp) / "dt-logs"))
    t0 = time.perf_counter()
    stats = executor.run()
    seconds = time.perf_counter() - t0
    by_step = {s.name: s.stats for s in stats.stats}
    reader = next(v for k, v in by_step.items() if "Warc" in k)
    extractor = next(v for k, v in by_step.items() if "Trafilatura" in k)
    read = int(_value(reader.get("documents")))
    kept = int(_value(extractor.get("forwarded")))
    return read, kept, seconds


def _value(metric) -> float:
    """datatrove stats are plain numbers or metric objects with a `total`."""
    if metric is None:
        return 0.0
    return float(getattr(metric, "total", metric))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warc", help="folder of *.warc.gz files to use instead of crawling pydoc")
    parser.add_argument("--pages", type=int, default=200, help="pages to crawl when --warc is not given")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of each side, alternating; the fastest counts (a shared machine is noisy)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("trafilatura").setLevel(logging.CRITICAL)  # datatrove's warm-up parses "" and logs it
    cores = pin_to_one_core()
    with tempfile.TemporaryDirectory(prefix="llmpipe-bench-") as tmp:
        warc_dir = build_input(args, tmp)
        ours_runs, theirs_runs = [], []
        for i in range(args.repeat):
            ours_runs.append(run_llmpipe(warc_dir))
            theirs_runs.append(run_datatrove(warc_dir, str(Path(tmp) / f"run{i}")))
        ours = min(ours_runs, key=lambda r: r[2])
        theirs = min(theirs_runs, key=lambda r: r[2])
    rates = []
    for name, (read, kept, seconds) in (("llmpipe", ours), ("datatrove", theirs)):
        rate = read / seconds / cores
        rates.append(rate)
        print(f"{name:>9}: {read} HTML docs read, {kept} kept, {seconds:.2f}s, {rate:.1f} docs/s per core")
    print(f"ratio llmpipe/datatrove (docs/s per core): {rates[0] / rates[1]:.2f}")


if __name__ == "__main__":  # datatrove's executor starts processes: this guard is required
    sys.exit(main())
