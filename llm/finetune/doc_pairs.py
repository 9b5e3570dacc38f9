"""Prompt/response pairs from crawled documentation: a function's signature, then its docstring.

The demo crawl holds Python's own documentation as `pydoc` renders it. Every documented function and
method on a module page becomes one pair:

    {"id": "/json.html#-dumps",
     "prompt": "json.dumps(obj, *, skipkeys=False, ensure_ascii=True, ...)",
     "response": "Serialize ``obj`` to a JSON formatted ``str``.\\n\\nIf ``skipkeys`` is true ..."}

`build_doc_pairs` reads the current crawl version's WARC files through the ingest pass's own reader and
writes the pairs as JSONL, in crawl order, byte-identical for the same crawl:

    from llm.finetune.doc_pairs import build_doc_pairs
    counts = build_doc_pairs("work/demo/raw/crawl", "work/demo/finetune/doc_pairs.jsonl")
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urlsplit

from llm import storage, versions

MIN_RESPONSE_CHARS = 20  # shorter docstrings ("Return repr(self).") teach nothing about the function
# "Pydoc: module json.decoder", "Pydoc: package json", "Pydoc: built-in module sys", "Python: module json"
_MODULE_TITLE = re.compile(r"\b(?:module|package)\s+([\w.]+)")
# A default value shown by its repr can hold a memory address (`<object object at 0x7f...>`): another in
# every process that renders the page, so it is cut from prompts.
_ADDRESS = re.compile(r"\s+at\s+0x[0-9a-fA-F]+")
# Placeholders C slot wrappers carry instead of a docstring: the same text on hundreds of classes.
_BOILERPLATE = re.compile(r"See help\(type(?:\(self\))?\) for accurate signature")
# The labels over a class's member lists ("Methods inherited from ", "Class methods defined here:"),
# written with plain spaces; docstring text, which pydoc spaces with U+00A0, never matches.
_MEMBER_LABEL = re.compile(r"\s*[A-Z][a-z]+(?: [a-z]+)* (inherited from|defined here):?\s*$")
_HTML_SPACE = re.compile(r"[ \t\n\r\f]+")  # HTML whitespace; U+00A0 (&nbsp;) is not, pydoc indents with it


# ------------------------------------------------------------------------------------------ one page


@dataclass
class _Entry:
    """One `<dt>` with an anchor: the routine's anchor, its declaration text, then its docstring."""

    anchor: str
    inherited: bool
    decl: list[str] = field(default_factory=list)
    doc: list[str] | None = None  # None until its `<dd>` starts


class _PydocParser(HTMLParser):
    """Collects every anchored `<dt>`/`<dd>` pair of a pydoc page.

    pydoc writes a routine as `<dl><dt>[async ]<a name="Class-name"><strong>name</strong></a>(sig)
    [<span class="grey"> from ...</span>]</dt><dd><span class="code">doc, <br> per line</span></dd></dl>`
    (module-level routines have an empty class part, `-name`). Only the tags matter here, not their
    classes or the `<tt>`/`<span>` around the text, so older and newer pydoc markup read the same (older
    versions write the grey note as `<font color=...>`).
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.entries: list[_Entry] = []
        self._entry: _Entry | None = None
        self._in_dt = False
        self._dd_depth = 0
        self._grey_depth = 0  # inside the grey note of a `<dt>` (" from builtins.type"): not the signature
        self._pre_depth = 0
        self._pending_decl: list[str] = []  # a `<dt>`'s text before its anchor (`async `)
        # "Methods inherited from X:" heads the members a class only inherits; "... defined here:" and
        # each new class section end that run.
        self._inherited = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "dt":
            self._in_dt, self._entry, self._pending_decl = True, None, []
        elif tag == "a" and attr.get("name") is not None:
            self._anchor(attr["name"] or "")
        elif tag in ("span", "font") and self._in_dt:
            if self._grey_depth or tag == "font" or "grey" in (attr.get("class") or "").split():
                self._grey_depth += 1
        elif tag == "dd":
            self._in_dt = False
            self._dd_depth += 1
            if self._dd_depth == 1 and self._entry is not None and self._entry.doc is None:
                self._entry.doc = []
        elif tag == "br":
            self._text("\n")
        elif tag == "pre":
            self._pre_depth += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)  # `<br/>`; nothing else written self-closed matters here

    def handle_endtag(self, tag: str) -> None:
        if tag == "dt":
            self._in_dt = False
        elif tag in ("span", "font"):
            self._grey_depth = max(0, self._grey_depth - 1)
        elif tag == "dd":
            self._dd_depth = max(0, self._dd_depth - 1)
            if self._dd_depth == 0:
                self._entry = None  # one docstring per routine
        elif tag == "dl" and not self._dd_depth:
            # pydoc leaves the `<dt>` of a data attribute unclosed: the list's end closes it
            self._entry, self._in_dt = None, False
        elif tag == "pre":
            self._pre_depth = max(0, self._pre_depth - 1)

    def handle_data(self, data: str) -> None:
        if not self._in_dt and not self._dd_depth:
            label = _MEMBER_LABEL.match(data)
            if label:
                self._inherited = label.group(1) == "inherited from"
        self._text(data if self._pre_depth else _HTML_SPACE.sub(" ", data))

    def _anchor(self, name: str) -> None:
        """An `<a name>`: a routine inside a `<dt>`, else (a class section's title) a new class."""
        if not self._in_dt:
            if "-" not in name:
                self._inherited = False
            return
        if self._entry is None and "-" in name:
            # `-name` is a module-level routine: never under a class's "inherited from" label
            inherited = self._inherited and not name.startswith("-")
            self._entry = _Entry(name, inherited, list(self._pending_decl))
            self.entries.append(self._entry)

    def _text(self, text: str) -> None:
        if self._in_dt and not self._grey_depth:
            (self._entry.decl if self._entry is not None else self._pending_decl).append(text)
        elif self._dd_depth and self._entry is not None and self._entry.doc is not None:
            self._entry.doc.append(text)


def module_name(html: str) -> str | None:
    """The dotted module name of a pydoc module page (from its title); None for any other page."""
    match = re.search(r"<title>(.*?)</title>", html, re.S | re.I)
    found = _MODULE_TITLE.search(match.group(1)) if match else None
    return found.group(1) if found else None


def normalize_docstring(text: str) -> str:
    """Whitespace normalized, line and paragraph breaks kept: runs of spaces become one, the common
    indentation is removed (an example's own indentation stays), and runs of blank lines become one."""
    lines = []
    for line in text.split("\n"):
        line = line.lstrip(" ")  # the space an HTML line break leaves; pydoc's indentation is U+00A0
        body = " ".join(line.split())
        lines.append((len(line) - len(line.lstrip()), body) if body else (0, ""))
    indent = min((n for n, body in lines if body), default=0)
    out: list[str] = []
    for n, body in lines:
        if body or (out and out[-1]):
            out.append(" " * (n - indent) + body if body else "")
    return "\n".join(out).strip("\n")


def _signature(entry: _Entry, module: str) -> str | None:
    """`module[.Class].name(args)` for a routine's `<dt>`, or None when it shows no argument list.

    The anchor names the routine and its class; the text around it gives the arguments. An alias
    (`name = realname(args)`) keeps its own name, the one the page documents it under."""
    cls, _, name = entry.anchor.rpartition("-")
    decl = " ".join("".join(entry.decl).split())
    start = decl.find("(")
    if not name or start < 0:
        return None
    prefix = "async " if decl.startswith("async ") else ""
    return f"{prefix}{'.'.join(p for p in (module, cls, name) if p)}{_ADDRESS.sub('', decl[start:])}"


def _page_id(url: str) -> str:
    """The page's path and query: the documentation server picks a new port every run, and the crawl
    keys its pages the same way, so ids stay the same across crawls of one site."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _only_comments(text: str) -> bool:
    """True for the source comments pydoc shows where a routine has no docstring."""
    return all(line.lstrip().startswith("#") for line in text.splitlines() if line.strip())


class _Seen:
    """Pairs already given. A repeat is the same prompt, or the same routine name with the same
    docstring: one routine shown again (re-exported by a package, a bound method offered as a module
    function, one C slot's text on every type that defines the slot) teaches nothing new."""

    def __init__(self) -> None:
        self.keys: set = set()

    def add(self, pair: dict) -> bool:
        """Record `pair`; False when it repeats one already recorded."""
        name = pair["id"].rpartition("-")[2]
        keys = (("prompt", pair["prompt"]), ("doc", name, pair["response"]))
        if any(k in self.keys for k in keys):
            return False
        self.keys.update(keys)
        return True


def pairs_from_pydoc_html(html: str, url: str) -> list[dict]:
    """The documented functions and methods of one pydoc module page, in page order.

    Each is `{"id": "<path>#<anchor>", "prompt": signature, "response": docstring}`. Left out: routines
    without a docstring or with one under `MIN_RESPONSE_CHARS`, C slot placeholders, members a class
    only inherits (documented where they are defined; on every subclass they would repeat one text),
    and repeats of a prompt already given. Any page that is not a module page gives nothing."""
    module = module_name(html)
    if module is None:
        return []
    parser = _PydocParser()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # a broken page keeps the entries read before the break
        pass
    page, seen, out = _page_id(url), _Seen(), []
    for entry in parser.entries:
        prompt = _signature(entry, module)
        response = normalize_docstring("".join(entry.doc or []))
        if (entry.inherited or prompt is None or len(response) < MIN_RESPONSE_CHARS
                or _BOILERPLATE.search(response) or _only_comments(response)):
            continue
        pair = {"id": f"{page}#{entry.anchor}", "prompt": prompt, "response": response}
        if seen.add(pair):
            out.append(pair)
    return out


# ----------------------------------------------------------------------------------------- a crawl


def crawl_warc_files(crawl_uri: str) -> list[str]:
    """The WARC files of a crawl version (`root`: the current one, `root@version`: that one), in crawl
    order, as its manifest lists them: files a killed or older crawl left beside them are not read."""
    root, version = versions.split(crawl_uri)
    root = storage.absolute(root).rstrip("/")
    manifest = versions.read(versions.pinned(root, version) if version else root)
    return [storage.join(root, rel) for rel in manifest.get("warc_files", [])]


def _html_pages(crawl_uri: str) -> list[tuple]:
    """(position, page id, url, html) of each 2xx HTML page's current copy, in the order those copies
    were crawled.

    A refreshed crawl lists the first crawl's files, then the refresh's, which hold a changed page
    again; files are read newest first so the first copy met of a page is its current one."""
    from llm.config import SourceConfig
    from llm.data.extract import decode_payload
    from llm.data.readers import InputUnit, is_quarantine, read_unit

    files = crawl_warc_files(crawl_uri)
    root = storage.absolute(versions.split(crawl_uri)[0]).rstrip("/")
    source = SourceConfig(kind="crawl", name="web")
    kept: dict[str, tuple] = {}
    for index in range(len(files) - 1, -1, -1):
        unit = InputUnit(f"doc-pairs-{index:05d}", source, (files[index],), root)
        for record_no, rec in enumerate(read_unit(unit)):
            if is_quarantine(rec) or rec["content_type"] != "html" or not rec.get("url"):
                continue
            if not 200 <= int(json.loads(rec["meta"]).get("status", 0)) < 300:
                continue
            page = _page_id(rec["url"])
            if page in kept:
                continue
            try:
                html = decode_payload(rec["payload"], rec["charset"])
            except ValueError:  # binary or undecodable: not a page to read
                html = ""
            kept[page] = ((index, record_no), page, rec["url"], html)
    return sorted(kept.values(), key=lambda item: item[0])


def build_doc_pairs(crawl_uri: str, out_uri: str, max_pairs: int | None = None) -> dict:
    """Write the pairs of every page of the crawl to `out_uri` (JSONL, UTF-8, local or s3://).

    Pages in crawl order, each page's pairs in page order; a pair repeating one an earlier page gave
    (a class documented on its module's page and again on its package's) is left out. `max_pairs`
    keeps the first that many. Returns `{"pages": HTML pages read, "pairs": lines written, "skipped_pages": pages
    that gave no pair (not module pages, nothing documented, or only repeats)}`."""
    seen = _Seen()
    lines: list[str] = []
    pages = skipped = 0
    for _, _, url, html in _html_pages(crawl_uri):
        if max_pairs is not None and len(lines) >= max_pairs:
            break
        pages += 1
        fresh = [p for p in pairs_from_pydoc_html(html, url) if seen.add(p)]
        if max_pairs is not None:
            fresh = fresh[: max_pairs - len(lines)]
        skipped += not fresh
        lines.extend(json.dumps(pair, ensure_ascii=False) + "\n" for pair in fresh)
    storage.write_bytes(out_uri, "".join(lines).encode("utf-8"))
    return {"pages": pages, "pairs": len(lines), "skipped_pages": skipped}
