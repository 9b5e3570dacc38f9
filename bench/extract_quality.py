"""Extraction quality: llmpipe's extractors against trafilatura's own defaults, on pages with reference text.

    .venv/bin/python bench/extract_quality.py                 # reads ../shared/data
    .venv/bin/python bench/extract_quality.py --data DIR

The pages and their references are `llm.data.extract_eval.reference_pages`: the Python documentation
pages of `html_dev.jsonl` against their reStructuredText sources, real news pages against their article
text, and the article pages a real blog's Atom feed links to against the text of each entry's
`<content>`. Every side extracts the same pages in this process, one after another; the figures are word
precision / recall / F1 (mean over pages) per set, and pages per second of CPU time over the docs and
news pages (best of `--repeat`). Sides: llmpipe's `auto` (the default two tiers), `trafilatura` (its
precision setting, the fallback of `auto`) and `resiliparse` alone, trafilatura with `favor_recall`
(the project's earlier default), and `trafilatura.extract(html)` with
nothing set (the library's own defaults: comments kept, neither precision nor recall favoured). The last
line is the docs F1 ratio `auto`/trafilatura's defaults.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import trafilatura

from llm.config import ExtractConfig
from llm.data.extract import extract_html
from llm.data.extract_eval import reference_pages, score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    parser.add_argument("--repeat", type=int, default=2, help="timing rounds over the docs and news pages")
    args = parser.parse_args()
    pages = reference_pages(args.data)
    timed = [p for p in pages if p.kind != "feed"]
    sides = {f"llmpipe {name}": (lambda html, cfg=ExtractConfig(extractor=name): extract_html(html, cfg))
             for name in ("auto", "trafilatura", "resiliparse")}
    recall = ExtractConfig(extractor="trafilatura", favor_precision=False, favor_recall=True)
    sides["llmpipe favor_recall"] = lambda html: extract_html(html, recall)
    sides["trafilatura defaults"] = lambda html: trafilatura.extract(html) or ""
    kinds = sorted({p.kind for p in pages})
    print("pages: " + ", ".join(f"{kind} {sum(p.kind == kind for p in pages)}" for kind in kinds))
    f1 = {}
    for name, extract in sides.items():
        scores = score(extract, pages)
        best = float("inf")
        for _ in range(args.repeat):
            start = time.process_time()
            for page in timed:
                extract(page.html)
            best = min(best, time.process_time() - start)
        f1[name] = scores["docs"][2]
        cells = "; ".join(f"{kind} P {scores[kind][0]:.3f} R {scores[kind][1]:.3f} F1 {scores[kind][2]:.3f}"
                          for kind in kinds)
        print(f"{name:>21}: {cells}; {len(timed) / best:.0f} pages/s")
    print(f"docs F1 ratio llmpipe auto / trafilatura defaults: {f1['llmpipe auto'] / f1['trafilatura defaults']:.3f}")


if __name__ == "__main__":
    main()
