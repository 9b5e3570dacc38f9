"""A small static web site of real English text for tests that run the data stages end to end, and a
pinned crawl clock so that two crawls of it write the same bytes.

The pages are the documentation strings of standard-library modules (prose that passes the quality
filters), linked from an index two levels deep, with an exact and a near copy of one page (for the
dedup stages), a large table page (its extraction takes a fifth of a second of CPU, not milliseconds),
a style sheet and a broken link. The server sends fixed `Date` headers and ETags, so a
refresh gets 304s and writes nothing.

A crawl writes its capture time (`WARC-Date`) and random record ids into every WARC file, and ingest
reads both; two crawls an instant apart give different files and so different datasets downstream.
`pin_crawl_clock` fixes them in this process; `pinned_clock_env` does the same for a child process
(the `llmpipe` command), through a `sitecustomize` module on its `PYTHONPATH`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import uuid
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterator

from tests.http_site import serve

MODULES = ["argparse", "collections", "csv", "dataclasses", "decimal", "fractions", "functools", "heapq",
           "json", "logging", "pathlib", "pickle", "shlex", "statistics", "textwrap", "zipfile"]
SERVER_DATE = "Mon, 02 Mar 2026 10:00:00 GMT"
CAPTURE_DATE = "2026-03-02T10:00:00Z"


def _doc_text(name: str, limit: int = 3000) -> str:
    """The module's docstring, then its public callables' docstrings, up to about `limit` characters."""
    module = importlib.import_module(name)
    parts = [inspect.getdoc(module) or name]
    for attr in sorted(getattr(module, "__all__", None) or dir(module)):
        obj = getattr(module, attr, None)
        doc = inspect.getdoc(obj) if callable(obj) and not attr.startswith("_") else None
        if doc and sum(map(len, parts)) < limit:
            parts.append(f"{attr}: {doc}")
    return "\n\n".join(parts)


def _page(title: str, text: str, links: list[str]) -> bytes:
    paragraphs = "".join(f"<p>{p.replace('&', '&amp;').replace('<', '&lt;')}</p>\n" for p in text.split("\n\n"))
    anchors = " | ".join(f'<a href="{href}">{href}</a>' for href in links)
    return (f"<html><head><title>{title}</title><link rel=stylesheet href=/style.css></head><body>"
            f"<nav>{anchors}</nav><article><h1>{title}</h1>\n{paragraphs}</article></body></html>").encode()


def _names_table(modules: list[str]) -> bytes:
    """A table of every public name of `modules` with the first line of its docstring (about 250 KB)."""
    rows = []
    for name in modules:
        module = importlib.import_module(name)
        for attr in sorted(a for a in dir(module) if not a.startswith("_")):
            line = (inspect.getdoc(getattr(module, attr, None)) or "").split("\n")[0]
            line = line.replace("&", "&amp;").replace("<", "&lt;")
            rows.append(f"<tr><td>{name}</td><td><b>{attr}</b></td><td><p>{line}</p></td></tr>")
    return (f"<html><body><article><h1>Names</h1><table>{''.join(rows)}</table></article></body></html>").encode()


_TABLE_MODULES = ["argparse", "ast", "asyncio", "collections", "csv", "dataclasses", "datetime", "decimal", "email",
                  "enum", "fractions", "functools", "heapq", "inspect", "io", "itertools", "json", "logging", "os",
                  "pathlib", "pickle", "random", "re", "shlex", "shutil", "socket", "statistics", "string",
                  "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest", "uuid", "zipfile"]


def site_pages(modules: list[str] = MODULES) -> dict[str, tuple[str, bytes]]:
    """Path -> (content type, body) of the whole site."""
    html = "text/html; charset=utf-8"
    pages = {"/": (html, _page("Library notes", "Notes on the standard library, one page per module.",
                               [f"/{m}.html" for m in modules[: len(modules) // 2]] + ["/missing.html"]))}
    for i, name in enumerate(modules):
        # the first half of the pages links to the second half: the crawl goes two levels deep
        links = [f"/{modules[j]}.html" for j in (i + len(modules) // 2,) if j < len(modules)]
        pages[f"/{name}.html"] = (html, _page(name, _doc_text(name), links))
    json_text = _doc_text("json")
    pages["/json-copy.html"] = pages["/json.html"]
    pages["/json-mirror.html"] = (html, _page("json", json_text + "\n\nMirrored from the json page.", []))
    pages["/names.html"] = (html, _names_table(_TABLE_MODULES))
    pages["/"] = (html, pages["/"][1].replace(b"</nav>", b' | <a href="/json-copy.html">copy</a> | '
                                                        b'<a href="/json-mirror.html">mirror</a> | '
                                                        b'<a href="/names.html">names</a></nav>'))
    pages["/style.css"] = ("text/css", b"body { font-family: serif }")
    return pages


class TextSite(BaseHTTPRequestHandler):
    """Serves `site_pages()` with ETags (If-None-Match answered 304) and a fixed Date header."""

    pages: dict[str, tuple[str, bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path not in self.pages:
            return self._send(404, "text/plain", b"not found", None)
        ctype, body = self.pages[self.path]
        etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
        if self.headers.get("If-None-Match") == etag:
            return self._send(304, None, b"", etag)
        self._send(200, ctype, body, etag)

    def _send(self, status: int, ctype: str | None, body: bytes, etag: str | None) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        if etag:
            self.send_header("ETag", etag)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def date_time_string(self, timestamp=None) -> str:
        return SERVER_DATE  # the server's clock is no part of the pages

    def log_message(self, *args) -> None:
        pass


@contextmanager
def text_site() -> Iterator[str]:
    """The site on a free 127.0.0.1 port; yields its root URL."""

    class Handler(TextSite):
        pages = site_pages()

    with serve(Handler) as url:
        yield url


def _record_ids():
    """Record ids numbered in creation order: a crawl creates its records in a fixed order."""
    count = 0

    def make_warc_id(id_=None):
        nonlocal count
        count += 1
        return f"<urn:uuid:{id_ or uuid.UUID(int=count)}>"

    return make_warc_id


def pin_crawl_clock(monkeypatch) -> None:
    """Fixed capture dates and numbered record ids for crawls in this process."""
    from warcio.recordbuilder import RecordBuilder
    from warcio.statusandheaders import StatusAndHeadersParser

    from llm.data import crawl

    monkeypatch.setattr(crawl, "_warc_date", lambda: CAPTURE_DATE)
    monkeypatch.setattr(RecordBuilder, "_make_warc_date", classmethod(lambda cls, use_micros=False: CAPTURE_DATE))
    monkeypatch.setattr(StatusAndHeadersParser, "make_warc_id", staticmethod(_record_ids()))


def crawl_on_ray_with_pinned_clock(monkeypatch) -> None:
    """Pin the clock of the crawl stage where it runs (a Ray task, in a Ray worker), each crawl's record
    ids numbered from the start: `run_task` is given the stage wrapped in `PinnedClock`."""
    from llm import executor

    run_task = executor.run_task
    monkeypatch.setattr(executor, "run_task", lambda fn, *args, **kwargs: run_task(PinnedClock(fn), *args, **kwargs))


class PinnedClock:
    """`fn` called with `pin_crawl_clock`'s fixed capture dates and fresh record ids, in whatever process
    calls it; everything is put back after the call."""

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "pinned")

    def __call__(self, *args, **kwargs):
        import pytest

        with pytest.MonkeyPatch.context() as patch:
            pin_crawl_clock(patch)
            return self.fn(*args, **kwargs)


_SITECUSTOMIZE = f'''
# Written by tests/text_site.py: pins the crawl clock of the llmpipe command (see pin_crawl_clock), and
# of the Ray workers it starts, where its crawl runs.
import sys
if sys.argv and sys.argv[0].endswith(("llmpipe", "default_worker.py")):
    import uuid
    from warcio.recordbuilder import RecordBuilder
    from warcio.statusandheaders import StatusAndHeadersParser
    from llm.data import crawl

    _count = 0

    def _make_warc_id(id_=None):
        global _count
        _count += 1
        return "<urn:uuid:%s>" % (id_ or uuid.UUID(int=_count))

    crawl._warc_date = lambda: {CAPTURE_DATE!r}
    RecordBuilder._make_warc_date = classmethod(lambda cls, use_micros=False: {CAPTURE_DATE!r})
    StatusAndHeadersParser.make_warc_id = staticmethod(_make_warc_id)
'''


def pinned_clock_env(folder: Path) -> dict[str, str]:
    """The environment for an `llmpipe` child process whose crawls have a pinned clock."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(folder) + (os.pathsep + path if path else "")}
