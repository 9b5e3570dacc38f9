"""The crawler against real servers on 127.0.0.1: Python's pydoc server and a tiny http.server site."""

from __future__ import annotations

import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterator

import pytest
from warcio.archiveiterator import ArchiveIterator

from llm.config import CrawlConfig
from llm.data.crawl import TokenBucket, crawl, normalize_url, pydoc_server
from tests.http_site import serve

pytestmark = pytest.mark.integration


def _records(files: list[str]) -> list[tuple[str, str, object]]:
    """(file name, record type, record) for every record, in file order."""
    out = []
    for path in files:
        with open(path, "rb") as fh:
            for rec in ArchiveIterator(fh):
                rec.content_stream().read()
                out.append((Path(path).name, rec.rec_type, rec))
    return out


def _responses(files: list[str]) -> list[tuple[str, str]]:
    return [(name, rec.rec_headers.get_header("WARC-Target-URI")) for name, kind, rec in _records(files)
            if kind == "response"]


# ------------------------------------------------------------------------------------------- pydoc


@pytest.fixture(scope="module")
def pydoc_url() -> Iterator[str]:
    with pydoc_server() as url:
        yield url


def test_pydoc_crawl_is_limited_same_host_and_deterministic(pydoc_url: str, tmp_path: Path) -> None:
    cfg = CrawlConfig(max_pages=12, records_per_warc=5, concurrency=3)
    first = crawl(cfg, pydoc_url, str(tmp_path / "a"))
    second = crawl(cfg, pydoc_url, str(tmp_path / "b"))

    assert first.pages_fetched == 12 and first.pages_failed == 0
    assert [Path(f).name for f in first.warc_files] == ["crawl-00000.warc.gz", "crawl-00001.warc.gz",
                                                        "crawl-00002.warc.gz"]
    assert first.bytes == sum(Path(f).stat().st_size for f in first.warc_files)
    a, b = _responses(first.warc_files), _responses(second.warc_files)
    assert a == b, "two crawls of a static site must give the same URLs in the same files and order"
    assert [n for n, _ in a] == ["crawl-00000.warc.gz"] * 5 + ["crawl-00001.warc.gz"] * 5 + ["crawl-00002.warc.gz"] * 2
    urls = [u for _, u in a]
    assert urls[0] == pydoc_url and len(set(urls)) == 12
    assert all(u.startswith(pydoc_url) for u in urls)  # pydoc links to docs.python.org: not followed
    assert urls[1:] == sorted(urls[1:])  # the second BFS level, in sorted order


def test_every_pydoc_server_serves_the_same_pages(pydoc_url: str, monkeypatch) -> None:
    # Another server (another process, port, temporary folder and environment) must not change a page,
    # or every refresh of the demo would find pages changed and rebuild everything after the crawl.
    # The page of `os` shows the server's environment: ours must not reach the corpus.
    import requests

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "kept-out-of-the-corpus")
    with pydoc_server() as other:
        # the index lists the path entries; the others print reprs with memory addresses
        for path in ("", "os.html", "collections.html", "dataclasses.html", "ctypes.html", "robots.txt"):
            page = requests.get(other + path, timeout=30).text
            assert page == requests.get(pydoc_url + path, timeout=30).text, path
            assert "kept-out-of-the-corpus" not in page and " at 0x" not in page


def test_pydoc_warc_has_request_response_pairs(pydoc_url: str, tmp_path: Path) -> None:
    result = crawl(CrawlConfig(max_pages=4, records_per_warc=10), pydoc_url, str(tmp_path))
    records = _records(result.warc_files)
    kinds = Counter(kind for _, kind, _ in records)
    assert kinds == {"warcinfo": 1, "response": 4, "request": 4}
    responses = {rec.rec_headers.get_header("WARC-Record-ID"): rec for _, kind, rec in records if kind == "response"}
    for _, kind, rec in records:
        if kind != "request":
            continue
        resp = responses[rec.rec_headers.get_header("WARC-Concurrent-To")]
        assert rec.rec_headers.get_header("WARC-Target-URI") == resp.rec_headers.get_header("WARC-Target-URI")
        assert rec.http_headers.protocol == "GET"
        assert rec.http_headers.get_header("User-Agent") == "llmpipe-crawler/0.1"
        assert rec.http_headers.get_header("Host") == pydoc_url.split("/")[2]
    for resp in responses.values():
        assert resp.http_headers.protocol.startswith("HTTP/1.")
        assert resp.http_headers.get_statuscode() == "200"
        assert resp.http_headers.get_header("Content-Type") == "text/html; charset=UTF-8"
        assert resp.rec_headers.get_header("WARC-Payload-Digest").startswith("sha1:")


# ------------------------------------------------------------------------------------- a tiny site


class _Site(BaseHTTPRequestHandler):
    pages: dict[str, tuple[int, str, bytes]] = {}
    hits: Counter = Counter()
    times: dict[str, list[float]] = {}
    flaky_failures = 2

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.hits[self.path] += 1
        self.times.setdefault(self.path, []).append(time.monotonic())
        if self.path == "/flaky.html" and self.hits[self.path] <= self.flaky_failures:
            status, ctype, body = 503, "text/plain", b"try again"
        elif self.path in self.pages:
            status, ctype, body = self.pages[self.path]
        else:
            status, ctype, body = 404, "text/plain", b"not found"
        self.send_response(status)
        if status in (301, 302):
            self.send_header("Location", body.decode())
            body = b""
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _page(*links: str) -> tuple[int, str, bytes]:
    anchors = "".join(f'<a href="{href}">{href}</a> ' for href in links)
    return 200, "text/html; charset=utf-8", f"<html><body><p>{anchors}</p></body></html>".encode()


@pytest.fixture()
def site() -> Iterator[tuple[str, type[_Site]]]:
    """A static site on a free 127.0.0.1 port; robots.txt keeps crawlers out of /private/."""

    class Handler(_Site):
        hits = Counter()
        times = {}
        pages = {
            "/robots.txt": (200, "text/plain", b"User-agent: *\nDisallow: /private/\n"),
            "/": _page("a.html#top", "private/secret.html", "http://example.invalid/x", "old", "missing.html",
                       "flaky.html", "style.css", "mailto:me@example.invalid"),
            "/a.html": _page("/", "b.html", "A.HTML?x=1"),
            "/A.HTML?x=1": _page(),
            "/b.html": _page("../c.html", "private/deeper.html"),
            "/c.html": _page(),
            "/old": (301, "text/html", b"/moved.html"),
            "/moved.html": _page(),
            "/flaky.html": _page(),
            "/style.css": (200, "text/css", b"p { color: red }"),
            "/private/secret.html": _page(),
        }

    with serve(Handler) as url:
        yield url, Handler


def test_robots_links_redirects_and_failures(site, tmp_path: Path) -> None:
    url, handler = site
    cfg = CrawlConfig(max_pages=50, retries=2, backoff_s=0.05, rate_limit_per_s=200)
    result = crawl(cfg, url, str(tmp_path))
    fetched = [u for _, u in _responses(result.warc_files)]
    paths = [u[len(url) - 1:] for u in fetched]
    # robots.txt: /private/ is never requested, and both disallowed links are counted
    assert not any(p.startswith("/private/") for p in handler.hits)
    assert result.robots_disallowed == 2
    # fragments stripped (a.html#top is a.html), case and query kept, relative links resolved,
    # the redirect recorded as-is and its target followed, non-HTML fetched but not parsed
    assert paths == ["/", "/a.html", "/flaky.html", "/missing.html", "/old", "/style.css",
                     "/A.HTML?x=1", "/b.html", "/moved.html", "/c.html"]
    assert handler.hits["/a.html"] == 1
    assert result.pages_failed == 1  # the 404
    assert result.pages_fetched == 9
    # only the start host: the example.invalid link was not followed (it would not resolve anyway)
    assert all(u.startswith(url) for u in fetched)


def test_retries_with_exponential_backoff(site, tmp_path: Path) -> None:
    url, handler = site
    cfg = CrawlConfig(max_pages=50, retries=2, backoff_s=0.1, rate_limit_per_s=1000)
    crawl(cfg, url, str(tmp_path))
    assert handler.hits["/flaky.html"] == 3  # 503, 503, then 200
    t = handler.times["/flaky.html"]
    assert t[1] - t[0] >= 0.1 and t[2] - t[1] >= 0.2  # backoff doubles
    records = _records([str(p) for p in sorted(tmp_path.glob("*.warc.gz"))])
    flaky = [rec for _, kind, rec in records if kind == "response"
             and rec.rec_headers.get_header("WARC-Target-URI").endswith("/flaky.html")]
    assert len(flaky) == 1 and flaky[0].http_headers.get_statuscode() == "200"  # only the final answer


def test_retries_give_up_and_count_a_failure(site, tmp_path: Path) -> None:
    url, handler = site
    handler.flaky_failures = 10
    result = crawl(CrawlConfig(retries=1, backoff_s=0.01, rate_limit_per_s=1000), url, str(tmp_path))
    assert handler.hits["/flaky.html"] == 2
    assert result.pages_failed == 2  # the 404 and the 503 that never recovered


def test_page_limit_counts_html_only_and_cuts_at_the_same_place(site, tmp_path: Path) -> None:
    url, _ = site
    cfg = CrawlConfig(max_pages=4, backoff_s=0.01, rate_limit_per_s=1000)
    runs = [crawl(cfg, url, str(tmp_path / str(i))) for i in range(2)]
    lists = [[u for _, u in _responses(r.warc_files)] for r in runs]
    assert lists[0] == lists[1]
    html = [u for u in lists[0] if not u.endswith((".css", "/old", "missing.html"))]
    assert len(html) == 4 and lists[0][-1].endswith("/A.HTML?x=1")


def test_rerun_into_the_same_folder_leaves_only_its_own_files(site, tmp_path: Path) -> None:
    url, _ = site
    big = crawl(CrawlConfig(records_per_warc=2, backoff_s=0.01, rate_limit_per_s=1000), url, str(tmp_path))
    small = crawl(CrawlConfig(max_pages=1, records_per_warc=2, rate_limit_per_s=1000), url, str(tmp_path))
    assert len(big.warc_files) > 1
    assert sorted(str(p) for p in tmp_path.glob("crawl-*.warc.gz")) == small.warc_files


def test_token_bucket_spaces_requests() -> None:
    bucket = TokenBucket(rate=50)
    start = time.monotonic()
    for _ in range(11):
        bucket.acquire()
    assert time.monotonic() - start >= 0.19  # 10 waits of 1/50 s after the first token


def test_normalize_url() -> None:
    assert normalize_url("HTTP://Example.COM:80/a b#frag") == "http://example.com/a%20b"
    assert normalize_url("https://example.com:443") == "https://example.com/"
    assert normalize_url("http://example.com:8080/x?q=1") == "http://example.com:8080/x?q=1"
    assert normalize_url("mailto:x@y") is None and normalize_url("javascript:void(0)") is None
