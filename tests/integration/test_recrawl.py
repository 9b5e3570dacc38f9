"""The incremental recrawl (nightly refresh) against a real http.server site on 127.0.0.1.

The site honours If-None-Match / If-Modified-Since the way a web server does, counts every request and
every 304 it sends, and its pages can be edited between crawls, so each test can say exactly which
requests a refresh must make and which pages it must write.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from contextlib import contextmanager
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterator

import pytest
from warcio.archiveiterator import ArchiveIterator

from llm.config import CrawlConfig
from llm.data.crawl import crawl, warc_name_pattern
from tests.http_site import serve

pytestmark = pytest.mark.integration

CFG = CrawlConfig(records_per_warc=2, backoff_s=0.01, rate_limit_per_s=1000)
T0 = 1_700_000_000  # fixed modification times: the test does not depend on the clock


class _Site(BaseHTTPRequestHandler):
    """`pages`: path -> (content type, body, modified time). `validators`: what the server sends and
    honours: "etag" (ETag / If-None-Match), "last_modified" (Last-Modified / If-Modified-Since) or
    "none" (neither: every request gets the full page)."""

    pages: dict[str, tuple[str, bytes, int]]
    validators: str
    lock: threading.Lock
    requests: Counter  # every request, by path
    full: Counter  # 200s sent, by path
    not_modified: Counter  # 304s sent, by path
    received: dict[str, tuple[str | None, str | None]]  # path -> (If-None-Match, If-Modified-Since)

    @classmethod
    def reset_counts(cls) -> None:
        cls.requests, cls.full, cls.not_modified, cls.received = Counter(), Counter(), Counter(), {}

    @classmethod
    def edit(cls, path: str, body: bytes, ctype: str = "text/html; charset=utf-8") -> None:
        """Change (or add) a page; its modification time moves an hour past the site's newest page."""
        newest = max(m for _, _, m in cls.pages.values())
        cls.pages[path] = (ctype, body, newest + 3600)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        inm, ims = self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")
        with self.lock:
            self.requests[self.path] += 1
            self.received[self.path] = (inm, ims)
        if self.path not in self.pages:
            return self._send(404, [("Content-Type", "text/plain")], b"not found")
        ctype, body, mtime = self.pages[self.path]
        headers = self._validators(body, mtime)
        if self._is_current(headers, inm, ims, mtime):
            with self.lock:
                self.not_modified[self.path] += 1
            return self._send(304, headers, b"")
        with self.lock:
            self.full[self.path] += 1
        self._send(200, [("Content-Type", ctype)] + headers, body)

    def _validators(self, body: bytes, mtime: int) -> list[tuple[str, str]]:
        if self.validators == "etag":
            return [("ETag", f'"{hashlib.sha256(body).hexdigest()[:16]}"')]
        if self.validators == "last_modified":
            return [("Last-Modified", formatdate(mtime, usegmt=True))]
        return []

    def _is_current(self, headers: list[tuple[str, str]], inm: str | None, ims: str | None, mtime: int) -> bool:
        # RFC 9110 13.2.2: If-None-Match, when sent, decides alone; If-Modified-Since only without it.
        etag = dict(headers).get("ETag")
        if inm is not None:
            return etag is not None and etag in [t.strip() for t in inm.split(",")]
        if ims is not None and self.validators == "last_modified":
            return mtime <= parsedate_to_datetime(ims).timestamp()
        return False

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if status != 304:  # a 304 has no body, and so no Content-Length of one
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _html(text: str, *links: str) -> bytes:
    anchors = "".join(f'<a href="{href}">{href}</a> ' for href in links)
    return f"<html><body><p>{text}</p><p>{anchors}</p></body></html>".encode()


def _site_v1() -> dict[str, tuple[str, bytes, int]]:
    html = "text/html; charset=utf-8"
    return {
        "/": (html, _html("home", "a.html", "b.html", "style.css"), T0),
        "/a.html": (html, _html("a", "deep.html"), T0),
        "/deep.html": (html, _html("deep"), T0),  # reachable only through a.html
        "/b.html": (html, _html("b, first version", "c.html"), T0),
        "/c.html": (html, _html("c, first version"), T0),
        "/style.css": ("text/css", b"p { color: red }", T0),
    }


@contextmanager
def _serve(validators: str) -> Iterator[tuple[str, type[_Site]]]:
    """The v1 site on a free 127.0.0.1 port, stopped when the test leaves the block."""

    class Handler(_Site):
        pages = _site_v1()
        lock = threading.Lock()

    Handler.validators = validators
    Handler.reset_counts()
    with serve(Handler) as url:
        yield url, Handler


def _responses(files: list[str]) -> list[tuple[str, str, bytes]]:
    """(file name, URL, payload) of every response record, in file order."""
    out = []
    for path in files:
        with open(path, "rb") as fh:
            for rec in ArchiveIterator(fh):
                payload = rec.content_stream().read()
                if rec.rec_type == "response":
                    out.append((Path(path).name, rec.rec_headers.get_header("WARC-Target-URI"), payload))
    return out


def _paths(url: str, files: list[str]) -> set[str]:
    return {u[len(url) - 1:] for _, u, _ in _responses(files)}


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every WARC file in `folder`: name -> (content digest, mtime in ns), to prove files untouched."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.glob("*.warc.gz"))}


def _requested(handler: type[_Site]) -> Counter:
    """Requests for pages: robots.txt is read on every crawl and is not a page."""
    return Counter({p: n for p, n in handler.requests.items() if p != "/robots.txt"})


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("validators", ["etag", "last_modified"])
def test_refresh_writes_only_new_and_changed_pages(validators: str, tmp_path: Path) -> None:
    with _serve(validators) as (url, site):
        first = crawl(CFG, url, str(tmp_path))
        assert _paths(url, first.warc_files) == set(site.pages)  # a first crawl writes everything
        assert first.new == 6 and first.changed == first.unchanged == first.not_modified == 0
        assert all(e["etag" if validators == "etag" else "last_modified"] for e in first.pages.values())
        before = _snapshot(tmp_path)

        # b and c change (b gains a link to a new page, which links to another new page); /, a.html,
        # deep.html and style.css stay as they were
        site.edit("/b.html", _html("b, second version", "c.html", "new.html"))
        site.edit("/c.html", _html("c, second version"))
        site.edit("/new.html", _html("new", "new2.html"))
        site.edit("/new2.html", _html("newer"))
        site.reset_counts()
        second = crawl(CFG, url, str(tmp_path), previous=first.pages, file_prefix="crawl-g00002")

        unchanged = {"/", "/a.html", "/deep.html", "/style.css"}
        fetched = {"/b.html", "/c.html", "/new.html", "/new2.html"}
        # one 304 per unchanged page (deep.html is reached through the links stored for a.html, whose
        # 304 had no body to parse), one full answer per changed or new page, nothing requested twice
        assert site.not_modified == Counter(dict.fromkeys(unchanged, 1))
        assert site.full == Counter(dict.fromkeys(fetched, 1))
        assert _requested(site) == Counter(dict.fromkeys(unchanged | fetched, 1))
        # the validators of the first crawl went out, only the kind the server gave, only for known URLs
        for path in site.pages:
            inm, ims = site.received[path]
            known = first.pages.get(url[:-1] + path)
            assert inm == (known["etag"] if known else None)
            assert ims == (known["last_modified"] if known else None)
            assert (inm if validators == "etag" else ims) is not None or not known

        assert _paths(url, second.warc_files) == fetched
        assert [Path(f).name for f in second.warc_files] == ["crawl-g00002-00000.warc.gz",
                                                             "crawl-g00002-00001.warc.gz"]
        assert second.bytes == sum(Path(f).stat().st_size for f in second.warc_files)
        after = _snapshot(tmp_path)
        assert {n: after[n] for n in before} == before, "the first crawl's files must stay as they were"
        assert set(after) == set(before) | {Path(f).name for f in second.warc_files}

        assert (second.not_modified, second.unchanged, second.changed, second.new) == (4, 0, 2, 2)
        assert second.pages_fetched == 8 and second.pages_failed == 0
        assert set(second.pages) == {url[:-1] + p for p in site.pages}
        a, b = url + "a.html", url + "b.html"
        assert second.pages[a]["last_status"] == 304 and second.pages[a]["status"] == 200
        assert {k: v for k, v in second.pages[a].items() if k != "last_status"} == \
            {k: v for k, v in first.pages[a].items() if k != "last_status"}
        assert second.pages[b]["last_status"] == second.pages[b]["status"] == 200
        assert second.pages[b]["sha256"] == hashlib.sha256(site.pages["/b.html"][1]).hexdigest()
        assert second.pages[b]["links"] == [url + "c.html", url + "new.html"]
        assert second.pages[url + "style.css"]["html"] is False

        # deterministic: the same refresh of the same site state writes the same records to the same files
        again = crawl(CFG, url, str(tmp_path / "again"), previous=first.pages, file_prefix="crawl-g00002")
        assert _responses(again.warc_files) == _responses(second.warc_files)


def test_without_validators_unchanged_bodies_are_found_by_digest(tmp_path: Path) -> None:
    with _serve("none") as (url, site):
        first = crawl(CFG, url, str(tmp_path))
        assert all(e["etag"] is None and e["last_modified"] is None for e in first.pages.values())
        site.edit("/c.html", _html("c, second version"))
        site.reset_counts()
        second = crawl(CFG, url, str(tmp_path), previous=first.pages, file_prefix="crawl-g00002")

        # nothing to send a condition with, so every page comes in full, once
        assert all(received == (None, None) for received in site.received.values())
        assert not site.not_modified
        assert site.full == Counter(dict.fromkeys(site.pages, 1))
        assert _paths(url, second.warc_files) == {"/c.html"}
        assert (second.not_modified, second.unchanged, second.changed, second.new) == (0, 5, 1, 0)
        # links of unchanged pages come from their bodies: deep.html was reached and compared too
        assert second.pages[url + "deep.html"]["last_status"] == 200
        assert second.pages[url + "deep.html"]["sha256"] == first.pages[url + "deep.html"]["sha256"]


def test_refresh_with_no_changes_writes_no_file_and_walks_the_same_pages(tmp_path: Path) -> None:
    # max_pages=4 cuts the site: /, then a.html, b.html and style.css, then c.html fills the fourth
    # HTML page and deep.html is never reached. A refresh whose 304s did not count as the pages they
    # stand for would walk on to deep.html.
    cfg = CFG.model_copy(update={"max_pages": 4})
    with _serve("etag") as (url, site):
        first = crawl(cfg, url, str(tmp_path))
        walked = set(first.pages)
        assert url + "deep.html" not in walked and len(walked) == 5
        # a file a killed earlier attempt of g00002 left, and a file of another version
        (tmp_path / "crawl-g00002-00003.warc.gz").write_bytes(b"left by a killed run")
        (tmp_path / "crawl-g00009-00000.warc.gz").write_bytes(b"another dataset version")
        keep = _snapshot(tmp_path)
        del keep["crawl-g00002-00003.warc.gz"]

        results = []
        previous = first.pages
        for prefix in ("crawl-g00002", "crawl-g00003"):  # the second refresh runs on carried entries
            site.reset_counts()
            result = crawl(cfg, url, str(tmp_path), previous=previous, file_prefix=prefix)
            assert site.not_modified == Counter(dict.fromkeys((u[len(url) - 1:] for u in walked), 1))
            assert not site.full
            results.append(result)
            previous = result.pages

        for result in results:
            # no change: no WARC file at all (not an empty one), and the same pages as the first crawl
            assert result.warc_files == [] and result.bytes == 0
            assert set(result.pages) == walked
            assert (result.not_modified, result.unchanged, result.changed, result.new) == (5, 0, 0, 0)
            assert all(e["last_status"] == 304 for e in result.pages.values())
            assert {u: e["sha256"] for u, e in result.pages.items()} == \
                {u: e["sha256"] for u, e in first.pages.items()}
        # the leftover of g00002 is gone; the first crawl's files and the other version's are untouched
        assert _snapshot(tmp_path) == keep


def test_default_prefix_never_removes_a_refresh_files(tmp_path: Path) -> None:
    with _serve("etag") as (url, site):
        first = crawl(CFG, url, str(tmp_path))
        site.edit("/c.html", _html("c, second version"))
        second = crawl(CFG, url, str(tmp_path), previous=first.pages, file_prefix="crawl-g00002")
        refresh_files = {n: v for n, v in _snapshot(tmp_path).items() if n.startswith("crawl-g00002-")}
        assert len(refresh_files) == len(second.warc_files) == 1
        # a plain crawl (today's behaviour: it replaces the `crawl-NNNNN` files) into the same folder,
        # shorter than the first, removes the first crawl's extra files but not the refresh's
        small = crawl(CFG.model_copy(update={"max_pages": 1}), url, str(tmp_path))
        names = set(_snapshot(tmp_path))
        assert names == {Path(f).name for f in small.warc_files} | set(refresh_files)
        assert {n: _snapshot(tmp_path)[n] for n in refresh_files} == refresh_files


def test_file_prefix_is_one_name_segment(tmp_path: Path) -> None:
    assert warc_name_pattern("crawl").fullmatch("crawl-00001.warc.gz")
    assert not warc_name_pattern("crawl").fullmatch("crawl-g00002-00001.warc.gz")
    assert not warc_name_pattern("crawl-g00002").fullmatch("crawl-00001.warc.gz")
    with pytest.raises(ValueError, match="file_prefix"):
        crawl(CFG, "http://127.0.0.1:9/", str(tmp_path), file_prefix="../elsewhere")


def test_crawl_stage_versions_append_on_refresh_and_stay_put_when_nothing_changed(tmp_path: Path) -> None:
    """The crawl as a versioned stage: a rerun reuses the crawl; a refresh adds a version holding the
    earlier files plus the changed and new pages; a refresh that finds nothing new keeps the version."""
    from llm import versions
    from llm.data.crawl_stage import crawl_stage
    from llm.data.readers import plan_inputs
    from llm.config import SourceConfig

    out = str(tmp_path / "crawl")
    with _serve("etag") as (url, site):
        cfg = CFG.model_copy(update={"start_url": url})
        first = crawl_stage(cfg, out)
        assert first["new"] == 6 and not first.get("reused")
        site.reset_counts()
        assert crawl_stage(cfg, out)["reused"] and not site.requests  # not a refresh: nothing fetched
        site.edit("/b.html", _html("b, second version", "c.html", "e.html"))
        site.edit("/e.html", _html("e is new"))
        second = crawl_stage(cfg, out, refresh=True)
        assert second["version"] != first["version"]
        assert second["parents"]["previous"]["version"] == first["version"]
        assert second["warc_files"][:len(first["warc_files"])] == first["warc_files"]
        new_files = [str(tmp_path / "crawl" / f) for f in second["warc_files"][len(first["warc_files"]):]]
        assert _paths(url, new_files) == {"/b.html", "/e.html"}
        assert sum(site.not_modified.values()) == 5 and (second["changed"], second["new"]) == (1, 1)
        # the ingest of the new version reads every file of it, in crawl order
        units = plan_inputs([SourceConfig(kind="crawl", name="web")], out)
        assert [u.files[0].rsplit("/", 1)[-1] for u in units] == second["warc_files"]
        site.reset_counts()
        third = crawl_stage(cfg, out, refresh=True)
        assert third["reused"] and third["version"] == second["version"] == versions.current(out)
        assert sum(site.not_modified.values()) == 7 and not site.full  # every page answered 304
