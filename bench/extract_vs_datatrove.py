"""HTML extraction throughput: llmpipe's per-document pass against datatrove's, same WARC files in, documents out.

    .venv/bin/python bench/extract_vs_datatrove.py                # crawl ~200 local pydoc pages first
    .venv/bin/python bench/extract_vs_datatrove.py --warc DIR     # or use existing WARC files

(a) llmpipe: `plan_inputs` + `process_unit` (its WARC reader, `ExtractStep`, `NormalizeStep`, in batches
    of 256 records) over each WARC file -> `write_shard` (kept and `rejected/` Parquet shards) and the
    dataset manifest. Extraction as configured by default: resiliparse's main-content pass on every page,
    trafilatura on the pages where that pass is unsure (`extract.extractor: auto`).
(b) datatrove: `WarcReader` + `Trafilatura` (+ `SymbolLinesFormatter`, its offline normalizer) +
    `ParquetWriter(compression="zstd")` in a `LocalPipelineExecutor(tasks=1, workers=1)`, with its logs
    and stats files; its extractor runs in a child process (datatrove's own timeout guard).
Both read the same WARC files; where trafilatura runs, both use the same options (precision over
recall, as FineWeb ran it, tables kept, no comments, no trafilatura dedup). Normalization differs a little: llmpipe applies NFC and
whitespace/control-character clean-up, datatrove removes symbol-only lines (its FTFY formatter needs
`ftfy`, not installed); both cost well under 1% of the time next to extraction.

Timing: each side runs in its own subprocess, spawned after this script has pinned itself to one CPU
(the child and its own children inherit it); sides alternate over `--repeat` rounds, each side's
fastest counts.
- **with start-up**: from spawning the subprocess to its documents being on disk (interpreter, imports,
  trafilatura's and lxml's first use, datatrove's extractor process, all inside).
- **steady**: the same job again in that subprocess, into a fresh folder.
Neither side gets a private warm-up: both get the same first run. Throughput divides one count, the HTML
response records in the files (warcio, HTTP Content-Type), by each side's seconds; each side's own count
of HTML documents read and kept is printed beside it (llmpipe sniffs the payload, datatrove's reader
has its own rules, so the two can differ by a few). The last line is the throughput ratio
llmpipe/datatrove with start-up, in HTML documents per second per core (above 1: llmpipe is faster).
datatrove's WarcReader needs `faust-cchardet` and `python-magic` (libmagic).

Quality, before the timings: each side's extraction of the development pages that come with reference
text (`llm.data.extract_eval`: html_dev's documentation pages against their reST sources, real news
pages against their article text), as word precision, recall and F1; datatrove's through its
`Trafilatura` extractor's own `extract`, with the options above. The share of pages llmpipe sent to
trafilatura is printed for those pages and for the timed input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sides import REPO, pin_to_one_core, spawn_side  # noqa: E402


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


def llmpipe_job(warc_dir: Path, out: Path) -> tuple[int, int]:
    """(HTML documents read, documents kept) for llmpipe's fused per-document pass, written as shards."""
    from llm.config import ExtractConfig, NormalizeConfig, SourceConfig
    from llm.data.dataset import write_manifest, write_record, write_shard
    from llm.data.extract import ExtractStep
    from llm.data.ingest import _total, process_unit
    from llm.data.normalize import NormalizeStep
    from llm.data.readers import plan_inputs

    steps = [ExtractStep(ExtractConfig()), NormalizeStep(NormalizeConfig())]
    html = kept = 0
    records = []
    for unit in plan_inputs([SourceConfig(kind="warc", name="web", uri=str(warc_dir), glob="*.warc.gz")], ""):
        docs, rejected, quarantined, counts = process_unit(unit, steps)
        record = write_shard(str(out), unit.shard, list(unit.files), docs, rejected, quarantined, _total(counts),
                             counts)
        write_record(str(out), record)
        records.append(record)
        html += counts["extract"].read - counts["extract"].dropped.get("unsupported_content_type", 0)
        kept += docs.num_rows
    write_manifest(str(out), "ingest", records)
    return html, kept


def datatrove_job(warc_dir: Path, out: Path) -> tuple[int, int]:
    """(HTML documents read, documents kept) for datatrove's executor on the same files."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.formatters import SymbolLinesFormatter
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import ParquetWriter

    pipeline = [
        WarcReader(str(warc_dir), glob_pattern="*.warc.gz"),
        _dt_extractor(),
        SymbolLinesFormatter(),
        ParquetWriter(str(out / "kept"), compression="zstd"),
    ]
    executor = LocalPipelineExecutor(pipeline, tasks=1, workers=1, logging_dir=str(out / "logs"))
    stats = executor.run()
    by_step = {s.name: s.stats for s in stats.stats}
    reader = next(v for k, v in by_step.items() if "Warc" in k)
    extractor = next(v for k, v in by_step.items() if "Trafilatura" in k)
    return int(_value(reader.get("documents"))), int(_value(extractor.get("forwarded")))


def _dt_extractor():
    from datatrove.pipeline.extractors import Trafilatura

    return Trafilatura(favour_precision=True, include_tables=True, deduplicate=False, timeout=5.0)


def quality(data_dir: Path) -> None:
    """Both sides' word precision / recall / F1 on the reference pages, per kind of page."""
    from llm.config import ExtractConfig
    from llm.data.extract import extract_html_with
    from llm.data.extract_eval import reference_pages, score

    pages = reference_pages(data_dir)
    used = []

    def ours(html: str) -> str:
        text, by = extract_html_with(html, ExtractConfig())
        used.append(by)
        return text

    theirs = _dt_extractor()
    for name, scores in (("llmpipe", score(ours, pages)), ("datatrove", score(theirs.extract, pages))):
        print(f"quality {name:>9}: " + "; ".join(f"{kind} ({sum(p.kind == kind for p in pages)} pages) P {s[0]:.3f} "
                                               f"R {s[1]:.3f} F1 {s[2]:.3f}" for kind, s in scores.items()))
    print(f"quality: llmpipe ran trafilatura on {used.count('trafilatura')} of {len(pages)} reference pages")


def fallback_share(out: Path) -> str:
    import pyarrow.parquet as pq

    by = [v for f in sorted(out.rglob("*.parquet")) if "rejected" not in f.parts and "quarantine" not in f.parts
          for v in pq.read_table(f, columns=["extractor"]).column("extractor").to_pylist()]
    return f"{by.count('trafilatura')} of {len(by)} kept pages"


def html_records(warc_dir: Path) -> int:
    """HTML response records in the folder's *.warc.gz files (warcio, HTTP Content-Type): the one document
    count both sides' throughput is divided by (each side's own count of what it read is printed too)."""
    from warcio.archiveiterator import ArchiveIterator

    n = 0
    for path in sorted(warc_dir.glob("*.warc.gz")):
        with open(path, "rb") as fh:
            for rec in ArchiveIterator(fh):
                if rec.rec_type == "response" and rec.http_headers is not None:
                    n += "html" in (rec.http_headers.get_header("Content-Type") or "").lower()
    return n


def child(args: argparse.Namespace) -> None:
    """One side in this subprocess: a first run timed from the parent's spawn, then a steady run."""
    logging.getLogger("trafilatura").setLevel(logging.CRITICAL)  # datatrove's warm-up parses "" and logs it
    job = llmpipe_job if args.side == "llmpipe" else datatrove_job
    warc_dir, out = Path(args.warc), Path(args.out)
    read, kept = job(warc_dir, out / "first")
    first = time.monotonic() - args.spawned  # CLOCK_MONOTONIC: the parent's clock
    t0 = time.monotonic()
    job(warc_dir, out / "steady")
    steady = time.monotonic() - t0
    times = {"startup": first, "steady": steady, "read": read, "kept": kept}
    if args.side == "llmpipe":
        times["fallback"] = fallback_share(out / "first")
    (out / "times.json").write_text(json.dumps(times))


def spawn(side: str, warc_dir: Path, out: Path) -> dict:
    return spawn_side(__file__, side, out, "--warc", str(warc_dir))


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
                        help="rounds, sides alternating; each side's fastest counts (a shared machine is noisy)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="development data folder")
    parser.add_argument("--side", choices=["llmpipe", "datatrove"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--spawned", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.side:
        child(args)
        return
    cores = pin_to_one_core()
    logging.getLogger("trafilatura").setLevel(logging.CRITICAL)
    quality(Path(args.data))
    with tempfile.TemporaryDirectory(prefix="llmpipe-bench-") as tmp:
        warc_dir = build_input(args, tmp)
        html = html_records(warc_dir)
        print(f"input: {html} HTML response records in {len(list(warc_dir.glob('*.warc.gz')))} WARC files")
        print("timed: with start-up = spawn of each side's subprocess to its documents on disk (imports, "
              "trafilatura, datatrove's extractor process inside); steady = the same job again in that process")
        best: dict[str, dict] = {}
        for r in range(args.repeat):
            for side in ("llmpipe", "datatrove"):
                t = spawn(side, warc_dir, Path(tmp) / f"{side}-{r}")
                print(f"  round {r + 1} {side:9s}: with start-up {t['startup']:6.2f} s, steady {t['steady']:6.2f} s",
                      flush=True)
                if side not in best or t["startup"] < best[side]["startup"]:
                    best[side] = t
    rates = {}
    for name in ("llmpipe", "datatrove"):
        t = best[name]
        rates[name] = html / t["startup"] / cores
        print(f"{name:>9}: {t['read']} HTML documents by its own count, {t['kept']} kept; with start-up "
              f"{t['startup']:.2f}s = {rates[name]:.1f} docs/s per core; steady {t['steady']:.2f}s = "
              f"{html / t['steady'] / cores:.1f} docs/s per core")
    print(f"  llmpipe ran trafilatura on {best['llmpipe']['fallback']} of the timed input")
    steady = best["datatrove"]["steady"] / best["llmpipe"]["steady"]
    print(f"steady ratio llmpipe/datatrove (docs/s per core): {steady:.2f}")
    print(f"ratio llmpipe/datatrove (docs/s per core, with start-up): {rates['llmpipe'] / rates['datatrove']:.2f}")


if __name__ == "__main__":  # datatrove's executor starts processes: this guard is required
    os.environ.setdefault("DO_NOT_TRACK", "1")
    sys.exit(main())
