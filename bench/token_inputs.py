"""The input of the tokenizer benchmarks: real text of the development data written as the project's
document shards (zstd Parquet files, their records and the dataset manifest), which every side reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
if str(REPO) not in sys.path:  # the parent builds the input with this checkout's code, as the sides run it
    sys.path.insert(0, str(REPO))


def stdlib_sources() -> list[str]:
    """The Python standard library's own .py sources (its tests included, third-party packages not):
    ~30 MB of distinct real text on every machine that runs the project."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts)
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def real_texts(data: Path, stdlib: bool = False) -> list[str]:
    """The distinct real texts of the development data folder: the Gutenberg books, the reST sources of
    `html_dev.jsonl`, the news articles and the language-ID texts (13 languages); with `stdlib`, the
    standard library's sources after them (`stdlib_sources`)."""
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted((data / "books").glob("*.txt"))]
    with (data / "html_dev.jsonl").open(encoding="utf-8") as fh:
        texts += [s for s in (json.loads(line).get("rst_source") for line in fh if line.strip()) if s]
    texts += [p.read_text(encoding="utf-8", errors="replace")
              for p in sorted((data / "news" / "articles" / "txt").glob("*.txt"))]
    with (data / "langid_dev.jsonl").open(encoding="utf-8") as fh:
        texts += [json.loads(line)["text"] for line in fh if line.strip()]
    if stdlib:
        texts += stdlib_sources()
    return [t for t in texts if t.strip()]


def write_docs(uri: Path, texts: list[str], copies: int, shards: int) -> tuple[int, int]:
    """`copies` of every text (copy c > 0 with ` #c` appended, so every document is distinct and has
    its own id) as a document dataset of `shards` shards, round robin; returns (documents, UTF-8 bytes)."""
    from llm.data import schema
    from llm.data.dataset import Counts, load_record, write_manifest, write_record, write_shard

    rows = [(schema.doc_id("bench", c, i), t if c == 0 else f"{t} #{c}")
            for c in range(copies) for i, t in enumerate(texts)]
    names = []
    for s in range(shards):
        part = rows[s::shards]
        n = len(part)
        table = pa.table({
            "id": pa.array([r[0] for r in part], pa.string()), "text": pa.array([r[1] for r in part], pa.string()),
            "source": pa.array(["web"] * n, pa.string()), "url": pa.nulls(n, pa.string()),
            "created": pa.nulls(n, pa.string()), "meta": pa.array(["{}"] * n, pa.string()),
        }, schema.DOC_SCHEMA)
        name = f"in-{s:05d}"
        record = write_shard(str(uri), name, [name], table, schema.reject_schema(schema.DOC_SCHEMA).empty_table(),
                             schema.QUARANTINE_SCHEMA.empty_table(), Counts(n, n))
        write_record(str(uri), record)
        names.append(name)
    write_manifest(str(uri), "bench", [load_record(str(uri), n) for n in names])
    return len(rows), sum(len(r[1].encode("utf-8")) for r in rows)


def pin(cores: int) -> int:
    """Pin this process (and the sides it spawns) to its first `cores` CPUs; the number pinned."""
    chosen = set(sorted(os.sched_getaffinity(0))[:cores])
    os.sched_setaffinity(0, chosen)
    return len(chosen)


def training_sample(root: Path, data: Path, copies: int, shards: int, sample_bytes: int,
                    stdlib: bool = False, line_length: int | None = None) -> tuple[list[str], dict]:
    """The documents written as shards under `root/docs`, then the tokenizer stage's sample of them
    (`build_sample`, in-process) as part files under `root/sample`: (part files, the sample section)."""
    from llm.executor import LocalExecutor
    from llm.tokenizer.sample import build_sample

    write_docs(root / "docs", real_texts(data, stdlib), copies, shards)
    from llm.data.dataset import read_manifest

    manifest = read_manifest(str(root / "docs"))
    files = [str(root / "docs" / s["files"]["data"]) for s in manifest["shards"]]
    total = sum(s["extra"]["text_bytes"] for s in manifest["shards"])
    return build_sample(files, str(root / "sample"), sample_bytes, {}, 0, LocalExecutor(), known_total=total,
                        line_length=line_length)


def bench_parser(doc: str, *hidden: str) -> argparse.ArgumentParser:
    """A parser with the options of every tokenizer benchmark (`--data`, `--cores`, `--repeat`) and the
    hidden ones a side is spawned with (`--side`, `--root`, `--out`, `--spawned` and `hidden`)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="development data folder")
    parser.add_argument("--cores", type=int, default=2, help="CPUs pinned for every side")
    parser.add_argument("--repeat", type=int, default=2, help="rounds, sides alternating; each side's fastest counts")
    parser.add_argument("--stdlib", action="store_true",
                        help="add the Python standard library's sources (~30 MB of distinct text) to the input")
    for name in ("--side", "--root", "--out", *hidden):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--spawned", type=float, help=argparse.SUPPRESS)
    return parser


def report_training(best: dict[str, dict], peer: str, mb: float, cores: int, target: float | None = None) -> None:
    """Per side its times and MB/s per core, then the steady and (last) the with-start-up time ratios
    llmpipe/`peer`, against `target` (at most) where there is one."""
    for side in ("llmpipe", peer):
        t = best[side]
        print(f"{side:>8}: {mb:.2f} MB; with start-up {t['startup']:.2f} s = {mb / t['startup'] / cores:.2f} MB/s "
              f"per core; steady {t['steady']:.2f} s = {mb / t['steady'] / cores:.2f} MB/s per core")
    ratio = best["llmpipe"]["startup"] / best[peer]["startup"]
    print(f"steady time ratio llmpipe/{peer}: {best['llmpipe']['steady'] / best[peer]['steady']:.3f}")
    met = "" if target is None else f"; target at most {target:g}: {'met' if ratio <= target else 'not met'}"
    print(f"time ratio llmpipe/{peer} (with start-up{met}): {ratio:.3f}")
