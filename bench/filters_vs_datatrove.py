"""Quality filters + e-mail/IP scrubbing: llmpipe's Arrow steps against datatrove's filters, same corpus.

    .venv/bin/python bench/filters_vs_datatrove.py                   # crawl + extract ~200 local pydoc pages
    .venv/bin/python bench/filters_vs_datatrove.py --jsonl FILE      # or any JSONL with a `text` field

(a) llmpipe: `QualityStep` (Gopher repetition, Gopher quality, C4, FineWeb) + `PiiStep` (e-mail, IP)
    over record batches of 256 documents, in this process.
(b) datatrove: `JsonlReader` + `GopherRepetitionFilter` + `GopherQualityFilter` + `C4QualityFilter` +
    `FineWebQualityFilter` + `PIIFormatter` in a `LocalPipelineExecutor(tasks=1, workers=1)`.
Both are pinned to the same single CPU; each side runs `--repeat` times, alternating, fastest counts.
Thresholds are the same (each library's defaults, which are the papers' values).

Both throughput runs remove lines as C4 does and measure FineWeb's rules on the text C4 left (llmpipe's
default `data.quality.c4.remove_lines`, datatrove's C4 filter rewriting the document in its pipeline).

Agreement is measured per rule set and per rule, each rule set applied by both sides to every original
document (datatrove's filters called one by one, llmpipe with `c4.remove_lines` off, so C4's line
removal does not feed the next set). Then the line removal itself: on the documents both C4s keep, the
share whose rewritten text is identical, and FineWeb's decision on each side's rewritten text. Known
differences: C4 sentences are counted by a punctuation pattern here and by spaCy's sentencizer there;
word tokens split leading/trailing punctuation here and follow spaCy's rules there (contractions,
abbreviations); the duplicate n-gram fraction marks every word covered by a repeated n-gram (the
paper's definition) where datatrove skips ahead greedily. The last line is the throughput ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DT_TO_OURS = {
    "dup_para_frac": "rep_dup_para_frac", "dup_para_char_frac": "rep_dup_para_char_frac",
    "dup_line_frac": "rep_dup_line_frac", "dup_line_char_frac": "rep_dup_line_char_frac",
    **{f"top_{n}_gram": f"rep_top_{n}gram" for n in (2, 3, 4)},
    **{f"duplicated_{n}_n_grams": f"rep_dup_{n}gram" for n in range(5, 11)},
    "gopher_short_doc": "gopher_min_words", "gopher_long_doc": "gopher_max_words",
    "gopher_below_avg_threshold": "gopher_min_mean_word_length",
    "gopher_above_avg_threshold": "gopher_max_mean_word_length",
    "gopher_too_many_hashes": "gopher_hash_ratio", "gopher_too_many_ellipsis": "gopher_ellipsis_ratio",
    "gopher_too_many_bullets": "gopher_bullet_lines", "gopher_too_many_end_ellipsis": "gopher_ellipsis_lines",
    "gopher_below_alpha_threshold": "gopher_alpha_words", "gopher_enough_stop_words": "gopher_stop_words",
    "lorem_ipsum": "c4_lorem_ipsum", "curly_bracket": "c4_curly_bracket", "too_few_sentences": "c4_min_sentences",
    "empty": "fw_line_punct_ratio", "line_punct_ratio": "fw_line_punct_ratio",
    "short_line_ratio": "fw_short_line_ratio", "char_dup_ratio": "fw_dup_line_char_ratio",
    "list_ratio": "fw_newline_word_ratio",
}
GROUPS = {"gopher_repetition": "rep_", "gopher": "gopher_", "c4": "c4_", "fineweb": "fw_"}


def build_corpus(args: argparse.Namespace, tmp: str) -> list[str]:
    if args.jsonl:
        return [json.loads(line)["text"] for line in Path(args.jsonl).read_text(encoding="utf-8").splitlines()
                if line.strip()]
    import pyarrow as pa

    from extract_vs_datatrove import build_input
    from llm.config import ExtractConfig, NormalizeConfig, SourceConfig
    from llm.data import schema
    from llm.data.extract import ExtractStep
    from llm.data.normalize import NormalizeStep
    from llm.data.readers import is_quarantine, plan_inputs, read_unit

    args.warc = None
    warc_dir = build_input(args, tmp)
    texts: list[str] = []
    for unit in plan_inputs([SourceConfig(kind="warc", name="web", uri=str(warc_dir), glob="*.warc.gz")], ""):
        raw = pa.Table.from_pylist([r for r in read_unit(unit) if not is_quarantine(r)], schema.RAW_SCHEMA)
        docs = NormalizeStep(NormalizeConfig()).apply(ExtractStep(ExtractConfig()).apply(raw).kept).kept
        texts += docs.column("text").to_pylist()
    return texts


def _quality_cfg(remove_lines: bool = True):
    from llm.config import QualityConfig

    return QualityConfig.model_validate({"sources": None, "c4": {"remove_lines": remove_lines}})


def run_llmpipe(texts: list[str]) -> tuple[int, int, float]:
    import pyarrow as pa

    from llm.config import PiiConfig
    from llm.data.pii import PiiStep
    from llm.data.quality import QualityStep

    steps = [QualityStep(_quality_cfg()), PiiStep(PiiConfig(types=["email", "ip"]))]
    t0 = time.perf_counter()
    kept = 0
    for start in range(0, len(texts), 256):
        chunk = texts[start:start + 256]
        docs = pa.table({"id": [str(i) for i in range(len(chunk))], "text": chunk, "source": ["web"] * len(chunk)})
        for step in steps:
            docs = step.apply(docs).kept
        kept += docs.num_rows
    return len(texts), kept, time.perf_counter() - t0


def _dt_filters():
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter)

    return {"gopher_repetition": GopherRepetitionFilter(), "gopher": GopherQualityFilter(),
            "c4": C4QualityFilter(), "fineweb": FineWebQualityFilter()}


def run_datatrove(corpus: Path, tmp: str) -> tuple[int, int, float]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader

    filters = _dt_filters()
    pipeline = [JsonlReader(str(corpus.parent), glob_pattern=corpus.name), filters["gopher_repetition"],
                filters["gopher"], filters["c4"], filters["fineweb"], PIIFormatter()]
    executor = LocalPipelineExecutor(pipeline, tasks=1, workers=1, logging_dir=str(Path(tmp) / "dt-logs"))
    t0 = time.perf_counter()
    stats = executor.run()
    seconds = time.perf_counter() - t0
    last = [s.stats for s in stats.stats if "FineWeb" in s.name][0]
    kept = int(getattr(last.get("forwarded"), "total", last.get("forwarded") or 0))
    return sum(1 for _ in corpus.open()), kept, seconds


def agreement(texts: list[str]) -> None:
    """Per rule set and per rule: share of documents where both sides make the same decision."""
    import pyarrow as pa
    from datatrove.data import Document

    from llm.data.filtering import decide
    from llm.data.quality import QualityStep, quality_rules

    cfg = _quality_cfg(remove_lines=False)
    ours = QualityStep(cfg).apply(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts,
                                            "source": ["web"] * len(texts)}))
    table = pa.concat_tables([ours.kept, ours.dropped.select(ours.kept.column_names)])
    order = {int(i): k for k, i in enumerate(table.column("id").to_pylist())}
    rules = quality_rules(cfg)
    print(f"{'rule set / rule':<32} {'agree':>7} {'llmpipe drops':>14} {'datatrove drops':>16}")
    for group, prefix in GROUPS.items():
        group_rules = [r for r in rules if r.name.startswith(prefix)]
        first, _ = decide(table, group_rules)
        mine = [group_rules[first[order[i]]].name if first[order[i]] >= 0 else None for i in range(len(texts))]
        flt = _dt_filters()[group]
        theirs = []
        for i, text in enumerate(texts):
            result = flt.filter(Document(text=text, id=str(i)))
            theirs.append(None if result is True else DT_TO_OURS.get(result[1], result[1]))
        same = sum((a is None) == (b is None) for a, b in zip(mine, theirs)) / len(texts)
        print(f"{group:<32} {same:>7.3f} {sum(m is not None for m in mine):>14} {sum(t is not None for t in theirs):>16}")
        for rule in sorted({r.name for r in group_rules}):
            if not any(rule in (a, b) for a, b in zip(mine, theirs)):
                continue
            agree = sum((a == rule) == (b == rule) for a, b in zip(mine, theirs)) / len(texts)
            print(f"  {rule:<30} {agree:>7.3f} {Counter(mine)[rule]:>14} {Counter(theirs)[rule]:>16}")
    line_removal_agreement(texts)


def line_removal_agreement(texts: list[str]) -> None:
    """C4's line removal on both sides: identical rewritten text, and FineWeb's decision on it, over the
    documents both C4 filters keep."""
    import pyarrow as pa
    from datatrove.data import Document

    from llm.config import QualityConfig
    from llm.data.filtering import decide
    from llm.data.quality import QualityStep, quality_rules

    docs = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts, "source": ["web"] * len(texts)})
    c4_only = QualityConfig.model_validate({"sources": None, **{g: {"enabled": g == "c4"} for g in GROUPS}})
    kept = QualityStep(c4_only).apply(docs).kept
    ours = dict(zip(kept.column("id").to_pylist(), kept.column("text").to_pylist()))
    # FineWeb's signals are measured on the rewritten text for every row, whatever the row's fate.
    full = QualityStep(_quality_cfg()).apply(docs)
    table = pa.concat_tables([full.kept, full.dropped.select(full.kept.column_names)])
    first, _ = decide(table, [r for r in quality_rules(_quality_cfg()) if r.name.startswith("fw_")])
    fw_keeps = dict(zip(table.column("id").to_pylist(), (first < 0).tolist()))
    c4, fw = _dt_filters()["c4"], _dt_filters()["fineweb"]
    same = both = fw_same = 0
    for i, text in enumerate(texts):
        doc = Document(text=text, id=str(i))
        if c4.filter(doc) is not True or str(i) not in ours:  # datatrove's C4 rewrites doc.text in place
            continue
        both += 1
        same += doc.text == ours[str(i)]
        fw_same += fw_keeps[str(i)] == (fw.filter(doc) is True)
    print(f"{'c4 line removal: same text':<32} {same / max(both, 1):>7.3f}   on {both} documents both keep")
    print(f"{'fineweb after line removal':<32} {fw_same / max(both, 1):>7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jsonl", help="JSONL file with a `text` field instead of crawling pydoc")
    parser.add_argument("--pages", type=int, default=200, help="pages to crawl when --jsonl is not given")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each side, alternating; the fastest counts")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from extract_vs_datatrove import pin_to_one_core

    cores = pin_to_one_core()
    with tempfile.TemporaryDirectory(prefix="llmpipe-bench-") as tmp:
        texts = build_corpus(args, tmp)
        corpus = Path(tmp) / "corpus" / "docs.jsonl"
        corpus.parent.mkdir()
        corpus.write_text("".join(json.dumps({"text": t, "id": str(i)}) + "\n" for i, t in enumerate(texts)))
        kb = sum(len(t.encode()) for t in texts) / max(len(texts), 1) / 1024
        print(f"input: {len(texts)} extracted documents, {kb:.1f} KB mean")
        run_llmpipe(texts[:10])  # model and pattern compilation out of the timing
        ours_runs, theirs_runs = [], []
        for i in range(args.repeat):
            ours_runs.append(run_llmpipe(texts))
            theirs_runs.append(run_datatrove(corpus, str(Path(tmp) / f"run{i}")))
        ours = min(ours_runs, key=lambda r: r[2])
        theirs = min(theirs_runs, key=lambda r: r[2])
        agreement(texts)
    rates = []
    for name, (read, kept, seconds) in (("llmpipe", ours), ("datatrove", theirs)):
        rate = read / seconds / cores
        rates.append(rate)
        print(f"{name:>9}: {read} docs, {kept} kept, {seconds:.2f}s, {rate:.1f} docs/s per core")
    print(f"ratio llmpipe/datatrove (docs/s per core): {rates[0] / rates[1]:.2f}")


if __name__ == "__main__":  # datatrove's executor starts processes: this guard is required
    os.environ.setdefault("DO_NOT_TRACK", "1")
    sys.exit(main())
