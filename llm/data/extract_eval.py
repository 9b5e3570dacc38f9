"""How well an extractor finds a page's main text: word-level precision, recall and F1 against reference text.

The reference pages are real pages with their text written independently of any extractor:
- `docs`: the development set's Python documentation pages (`html_dev.jsonl`), each scored against the
  reStructuredText source it was built from, with the reST role and directive markup taken out;
- `news`: real news pages (`news/articles/html/`) with the article text their publisher's page holds
  (`news/articles/txt/`), in a dozen languages;
- `feed`: the article pages a real blog's Atom feed links to (`news/blog/`), each scored against the
  text of its feed entry's `<content>`: the article body as its author wrote it, which the feed carries
  apart from the page's layout.

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
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable
from xml.etree import ElementTree

_WORD = re.compile(r"\w+")
# `:class:`, `.. function::`, `:synopsis:` and the like: reST markup, not text a reader sees.
_REST_MARKUP = re.compile(r":[a-z:]+:`|^\s*\.\. [a-z:-]+::|^\s*:[a-z]+:", re.M)


@dataclass(frozen=True)
class ReferencePage:
    """A page and the text an extractor should find in it."""

    kind: str  # `docs`, `news` or `feed`
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
    pages += feed_article_pages(data / "news" / "blog")
    return pages


_ATOM = "{http://www.w3.org/2005/Atom}"


def feed_article_pages(site: Path, feed: str = "feeds/all.atom.xml",
                       root: str = "http://blog.notmyidea.org/") -> list[ReferencePage]:
    """The pages of a saved site that its Atom feed's entries link to, each with the visible text of the
    entry's `<content>` as reference; entries without content or whose page is not saved are skipped."""
    if not (site / feed).exists():
        return []
    pages = []
    for entry in ElementTree.parse(site / feed).getroot().iter(f"{_ATOM}entry"):
        link, content = entry.find(f"{_ATOM}link"), entry.find(f"{_ATOM}content")
        href = link.get("href", "") if link is not None else ""
        path = site / href[len(root):] if href.startswith(root) else None
        if content is None or not (content.text or "").strip() or path is None or not path.is_file():
            continue
        pages.append(ReferencePage("feed", path.stem, path.read_text(encoding="utf-8", errors="replace"),
                                   _visible_text(content.text)))
    return pages


class _TextOf(HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def _visible_text(html: str) -> str:
    parser = _TextOf()
    parser.feed(html)
    return " ".join(parser.parts)


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
