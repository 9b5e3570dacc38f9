"""Signature/docstring pairs from pydoc pages: real pages rendered here by this Python's pydoc, and a
crawl of them by the project's crawler (manifest and WARC files as the demo's crawl stage writes them)."""

from __future__ import annotations

import inspect
import json
import json.decoder
import pydoc
import textwrap
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from llm import versions
from llm.config import CrawlConfig, SftDataConfig
from llm.data.crawl_stage import crawl_stage
from llm.finetune.doc_pairs import MIN_RESPONSE_CHARS, build_doc_pairs, normalize_docstring, pairs_from_pydoc_html
from llm.finetune.sft_data import read_sft
from tests.http_site import serve

BASE = "http://127.0.0.1:8000/"


def render(module) -> str:
    """The page `pydoc -w` writes for `module` (the documentation server serves the same body)."""
    return pydoc.html.page(pydoc.describe(module), pydoc.html.document(module, module.__name__))


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return {m.__name__: render(m) for m in (json, json.decoder, textwrap)}


def _pairs(pages: dict[str, str], name: str) -> list[dict]:
    return pairs_from_pydoc_html(pages[name], f"{BASE}{name}.html")


def _collapsed(doc: str) -> str:
    """A docstring as the pairs keep it: each line's indentation, its other runs of whitespace as one space."""
    return "\n".join(" " * (len(line) - len(line.lstrip())) + " ".join(line.split()) for line in doc.splitlines())


def _by_prompt_start(pairs: list[dict], start: str) -> dict:
    found = [p for p in pairs if p["prompt"].startswith(start)]
    assert len(found) == 1, (start, [p["prompt"] for p in pairs])
    return found[0]


# ------------------------------------------------------------------------------------------ one page


def test_json_dumps_is_its_signature_and_its_docstring(pages):
    dumps = _by_prompt_start(_pairs(pages, "json"), "json.dumps(")
    assert dumps["id"] == "/json.html#-dumps"
    assert dumps["prompt"] == f"json.dumps{inspect.signature(json.dumps)}"
    assert dumps["prompt"].startswith("json.dumps(obj, *, skipkeys=False, ensure_ascii=True")
    assert dumps["response"].startswith("Serialize ``obj`` to a JSON formatted ``str``.\n\nIf ``skipkeys`` is true")
    # the whole docstring, paragraph breaks kept, and nothing of the page around it
    assert dumps["response"] == _collapsed(inspect.getdoc(json.dumps))


def test_module_functions_and_methods_are_qualified_as_the_page_shows_them(pages):
    pairs = _pairs(pages, "textwrap")
    module_level = {p["prompt"] for p in pairs if "#-" in p["id"]}
    public = [n for n in textwrap.__all__ if inspect.isfunction(getattr(textwrap, n))]
    assert module_level == {f"textwrap.{n}{inspect.signature(getattr(textwrap, n))}" for n in public}
    wrap = _by_prompt_start(pairs, "textwrap.TextWrapper.wrap(")
    assert wrap == {"id": "/textwrap.html#TextWrapper-wrap", "prompt": "textwrap.TextWrapper.wrap(self, text)",
                    "response": _collapsed(inspect.getdoc(textwrap.TextWrapper.wrap))}
    raw = _by_prompt_start(_pairs(pages, "json.decoder"), "json.decoder.JSONDecoder.raw_decode(")
    assert raw["prompt"] == "json.decoder.JSONDecoder.raw_decode(self, s, idx=0)"
    assert raw["response"].startswith("Decode a JSON document from ``s``")


def test_indentation_inside_a_docstring_is_kept(pages):
    default = _by_prompt_start(_pairs(pages, "json"), "json.JSONEncoder.default(")
    assert default["response"] == _collapsed(inspect.getdoc(json.JSONEncoder.default))
    # its example is indented under the prose, as in the source
    assert "::\n\n    def default(self, o):\n        try:\n" in default["response"]


def test_what_is_left_out(pages):
    pairs = _pairs(pages, "json.decoder")
    prompts = [p["prompt"] for p in pairs]
    names = {p["id"].split("#")[1] for p in pairs}
    # inherited members (documented on the base class), the __init__ whose only text is the C slot's
    # "See help(type(self))" placeholder, and a docstring too short to teach anything
    assert not {"JSONDecodeError-with_traceback", "JSONDecodeError-add_note", "JSONDecodeError-__init__",
                "JSONDecodeError-__reduce__"} & names
    assert len(inspect.getdoc(json.decoder.JSONDecodeError.__reduce__)) < MIN_RESPONSE_CHARS
    assert names == {"JSONDecoder-__init__", "JSONDecoder-decode", "JSONDecoder-raw_decode"}
    # data descriptors (`__weakref__`) have no argument list; a default's memory address is cut
    assert all("(" in p and "0x" not in p for p in prompts)
    assert all(len(p["response"]) >= MIN_RESPONSE_CHARS for name in pages for p in _pairs(pages, name))


def test_repeats_on_a_page_are_given_once(pages):
    html = pages["json"]
    start = html.index('<dl><dt><a name="-dumps">')
    block = html[start: html.index("</dl>", start) + len("</dl>")]
    doubled = html.replace(block, block + "\n" + block)
    assert doubled.count('name="-dumps"') == 2
    assert pairs_from_pydoc_html(doubled, f"{BASE}json.html") == _pairs(pages, "json")


def test_pages_that_are_not_module_pages_give_nothing(pages):
    index = pydoc.html.page("Index of Modules", pydoc.html.index(str(Path(json.__file__).parent)))
    assert pairs_from_pydoc_html(index, BASE) == []
    assert pairs_from_pydoc_html("<html><body>not a page of pydoc</body></html>", BASE) == []
    assert pairs_from_pydoc_html(pages["json"][: len(pages["json"]) // 2], f"{BASE}json.html")  # cut short: what was read


def test_the_same_page_gives_the_same_pairs_whatever_the_host(pages):
    first = _pairs(pages, "json")
    assert pairs_from_pydoc_html(pages["json"], "http://127.0.0.1:9999/json.html") == first == _pairs(pages, "json")


def test_normalize_docstring():
    text = " First\xa0\xa0line.\n\xa0\n\n\xa0\xa0\xa0\xa0>>>\xa0f(1)\n Last\xa0line.\n\n"
    assert normalize_docstring(text) == "First line.\n\n    >>> f(1)\nLast line."
    assert normalize_docstring("\xa0\xa0a\n\xa0\xa0\xa0\xa0b") == "a\n  b"  # common indentation removed


# ----------------------------------------------------------------------------------------- a crawl


class _Site:
    """pydoc pages served by path; anything else is a 404 whose body is a module page, so a page
    taken from a failed answer would show."""

    def __init__(self, pages: dict[str, str]) -> None:
        index = "".join(f'<a href="{path[1:]}">{path}</a>' for path in sorted(pages))
        self.pages = {"/": f"<html><head><title>Pydoc: Index of Modules</title></head><body>{index}</body></html>",
                      **pages}
        self.missing = render(inspect)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = site.pages.get(self.path.split("?")[0])
                status = 200 if body is not None else 404
                data = (body if body is not None else site.missing).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        return Handler


CRAWL = dict(max_pages=20, records_per_warc=2, concurrency=2, rate_limit_per_s=1000, retries=0, backoff_s=0.01)


@pytest.fixture(scope="module")
def site(pages) -> _Site:
    return _Site({f"/{name}.html": html for name, html in pages.items()})


def _crawl(site: _Site, out: Path) -> dict:
    """The crawl stage over `site`, served for this crawl only (a new port each time)."""
    with serve(site.handler()) as url:
        return crawl_stage(CrawlConfig(start_url=url, **CRAWL), str(out))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_build_from_a_crawl(site, pages, tmp_path):
    crawl_dir = tmp_path / "raw" / "crawl"
    manifest = _crawl(site, crawl_dir)
    assert len(manifest["warc_files"]) >= 2  # pages spread over several files: read in the manifest's order
    out = tmp_path / "pairs" / "doc_pairs.jsonl"
    counts = build_doc_pairs(str(crawl_dir), str(out))

    # the index page gives nothing; json.decoder (crawled before json: sorted) gives JSONDecoder's methods,
    # which the json package shows again and are given once
    decoder, package, tw = _pairs(pages, "json.decoder"), _pairs(pages, "json"), _pairs(pages, "textwrap")
    again = [p for p in package if "#JSONDecoder-" in p["id"]]
    assert [p["id"].split("#")[1] for p in again] == [p["id"].split("#")[1] for p in decoder]
    assert counts == {"pages": 4, "pairs": len(decoder) + len(package) - len(again) + len(tw), "skipped_pages": 1}

    rows = _lines(out)
    assert len(rows) == counts["pairs"] and all(list(r) == ["id", "prompt", "response"] for r in rows)
    assert len({r["prompt"] for r in rows}) == len(rows)
    order = list(dict.fromkeys(r["id"].split("#")[0] for r in rows))
    assert order == ["/json.decoder.html", "/json.html", "/textwrap.html"]  # 404 answers are not read
    assert _by_prompt_start(rows, "json.dumps(") == _by_prompt_start(package, "json.dumps(")

    # the fine-tuning reader takes the file as it is
    records = list(read_sft(SftDataConfig(path=str(out))))
    assert [r.id for r in records] == [r["id"] for r in rows]
    assert records[0].messages == (("user", rows[0]["prompt"]), ("assistant", rows[0]["response"]))

    # the same crawl gives the same bytes; `max_pairs` keeps the first pairs
    again_out = tmp_path / "again.jsonl"
    assert build_doc_pairs(str(crawl_dir), str(again_out)) == counts
    assert again_out.read_bytes() == out.read_bytes()
    first = tmp_path / "first.jsonl"
    assert build_doc_pairs(str(crawl_dir), str(first), max_pairs=5)["pairs"] == 5
    assert first.read_text(encoding="utf-8").splitlines() == out.read_text(encoding="utf-8").splitlines()[:5]

    # a second crawl of the site (another server, another port) gives the same bytes
    second = tmp_path / "second"
    _crawl(site, second / "raw" / "crawl")
    build_doc_pairs(str(second / "raw" / "crawl"), str(second / "pairs.jsonl"))
    assert (second / "pairs.jsonl").read_bytes() == out.read_bytes()


def test_a_refreshed_crawl_gives_each_page_s_current_copy(pages, tmp_path):
    site = _Site({f"/{name}.html": html for name, html in pages.items()})
    crawl_dir = tmp_path / "crawl"
    old_text = "Remove any common leading whitespace from every line in `text`."
    new_text = "Strip the common leading whitespace of all lines in `text`."
    with serve(site.handler()) as url:  # one server: a refresh is a recrawl of the same site
        cfg = CrawlConfig(start_url=url, **CRAWL)
        first = crawl_stage(cfg, str(crawl_dir))
        page = site.pages["/textwrap.html"]
        site.pages["/textwrap.html"] = page.replace(old_text.replace(" ", "&nbsp;"), new_text.replace(" ", "&nbsp;"))
        assert site.pages["/textwrap.html"] != page
        refreshed = crawl_stage(cfg, str(crawl_dir), refresh=True)
    # the refresh appends a file holding the changed page; the first crawl's files, with its old copy, stay listed
    assert refreshed["warc_files"][: len(first["warc_files"])] == first["warc_files"]
    assert len(refreshed["warc_files"]) == len(first["warc_files"]) + 1

    out = tmp_path / "now.jsonl"
    assert build_doc_pairs(str(crawl_dir), str(out))["pages"] == 4
    dedent = [r for r in _lines(out) if r["prompt"].startswith("textwrap.dedent(")]
    assert len(dedent) == 1 and dedent[0]["response"].startswith(new_text)

    # a pinned version reads that version's files only
    before = tmp_path / "before.jsonl"
    build_doc_pairs(versions.pinned(str(crawl_dir), first["version"]), str(before))
    dedent = [r for r in _lines(before) if r["prompt"].startswith("textwrap.dedent(")]
    assert len(dedent) == 1 and dedent[0]["response"].startswith(old_text)
