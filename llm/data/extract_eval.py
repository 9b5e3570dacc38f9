"""How well an extractor finds a page's main text: word-level precision, recall and F1 against reference text.

The reference pages are real pages with their text written independently of any extractor:
- `docs`: the development set's Python documentation pages (`html_dev.jsonl`), each scored against the
  reStructuredText source it was built from, with the reST role and directive markup taken out;
- `news`: real news pages (`news/articles/html/`) with the article text their publisher's page holds
  (`news/articles/txt/`), in a dozen languages.

Scores compare bags of lower-cased word tokens (runs of letters and digits, any script): precision is
the share of extracted words that are in the reference, recall the share of reference words
extracted. A page's F1 is their harmonic mean; a set's figure is the mean over its pages, so a long
page weighs as much as a short one. Markup the reference keeps and the page never shows (a code
example's prompt, a heading underline) costs every extractor alike.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

_WORD = re.compile(r"\w+")
# `:class:`, `.. function::`, `:synopsis:` and the like: reST markup, not text a reader sees.
_REST_MARKUP = re.compile(r":[a-z:]+:`|^\s*\.\. [a-z:-]+::|^\s*:[a-z]+:", re.M)


@dataclass(frozen=True)
class ReferencePage:
    """A page and the text an extractor should find in it."""

    kind: str  # `docs` or `news`
    name: str
    html: str
    reference: str


def reference_pages(data_dir: str | Path) -> list[ReferencePage]:
    """The development data's pages that come with reference text (pages without one are skipped)."""
    data = Path(data_dir)
    pages = []
    with open(data / "html_dev.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row.get("rst_source"):
                pages.append(ReferencePage("docs", row["id"], row["html"], _REST_MARKUP.sub(" ", row["rst_source"])))
    for html in sorted((data / "news" / "articles" / "html").glob("*.html")):
        txt = data / "news" / "articles" / "txt" / f"{html.stem}.txt"
        if txt.exists():
            pages.append(ReferencePage("news", html.stem, html.read_text(encoding="utf-8", errors="replace"),
                                       txt.read_text(encoding="utf-8", errors="replace")))
    return pages


def word_scores(extracted: str, reference: str) -> tuple[float, float, float]:
    """(precision, recall, F1) of the extracted words against the reference's, as bags of words."""
    got = Counter(w.lower() for w in _WORD.findall(extracted))
    want = Counter(w.lower() for w in _WORD.findall(reference))
    common = sum((got & want).values())
    precision = common / sum(got.values()) if got else 0.0
    recall = common / sum(want.values()) if want else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def score(extract: Callable[[str], str], pages: list[ReferencePage]) -> dict[str, tuple[float, float, float]]:
    """Mean (precision, recall, F1) per kind of page for `extract` (html -> text)."""
    by_kind: dict[str, list[tuple[float, float, float]]] = {}
    for page in pages:
        by_kind.setdefault(page.kind, []).append(word_scores(extract(page.html) or "", page.reference))
    return {kind: tuple(sum(s[i] for s in scores) / len(scores) for i in range(3))  # type: ignore[misc]
            for kind, scores in by_kind.items()}
