"""The project's web crawler: same host, robots.txt honoured, everything written as WARC.

The crawl is breadth-first and deterministic for a static site: each level's URLs are sorted, fetched
concurrently, and written in sorted order, and the page limit cuts at the same URL every time, so two
crawls of one server give the same URLs in the same files in the same order (only the dates and record
ids in the WARC headers differ).

    from llm.config import CrawlConfig
    from llm.data.crawl import crawl, pydoc_server
    with pydoc_server() as url:
        result = crawl(CrawlConfig(max_pages=50), url, "work/crawl")
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import re
import selectors
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html.parser import HTMLParser
from typing import Iterator
from urllib import robotparser
from urllib.parse import quote, urldefrag, urljoin, urlsplit, urlunsplit

import requests
from tqdm import tqdm
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from llm import __version__, storage
from llm.config import CrawlConfig

log = logging.getLogger(__name__)

# Bodies above this are cut and the record marked `WARC-Truncated: length`, so one huge file cannot
# exhaust memory (records are held in memory until their WARC file is written).
MAX_BODY_BYTES = 32 * 1024 * 1024
HTML_TYPES = ("text/html", "application/xhtml+xml")
WARC_NAME = re.compile(r"crawl-\d{5,}\.warc\.gz")


@dataclass
class CrawlResult:
    """What a crawl did. `bytes` is the size of the WARC files written."""

    pages_fetched: int = 0  # responses with a 2xx/3xx status
    pages_failed: int = 0  # connection errors or 4xx/5xx after the retries
    robots_disallowed: int = 0  # distinct same-host URLs robots.txt kept us from
    warc_files: list[str] = field(default_factory=list)
    bytes: int = 0


@dataclass
class _Fetch:
    """One request and its final answer (after retries); `response` is None on a connection error."""

    url: str
    request_line: str = ""
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    status: int | None = None
    status_line: str = ""
    protocol: str = "HTTP/1.1"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    truncated: bool = False
    date: str = ""
    error: str | None = None

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def is_html(self) -> bool:
        mime = (self.header("Content-Type") or "").split(";")[0].strip().lower()
        return self.status is not None and 200 <= self.status < 300 and mime in HTML_TYPES


# ------------------------------------------------------------------------------------ pydoc server


@contextmanager
def pydoc_server(timeout_s: float = 30.0) -> Iterator[str]:
    """Run Python's own documentation server on 127.0.0.1 and yield its base URL.

    It is the demo corpus: hundreds of real HTML pages, nothing downloaded. It answers every path,
    robots.txt included, with an HTML page that holds no rules, so everything is allowed.
    """
    env = dict(os.environ)
    # Serving a module's page imports it. A few stdlib modules act on import: `antigravity` opens a
    # browser (BROWSER=true makes that a no-op), GUI modules open windows (no DISPLAY), and some
    # `__main__` modules run tools in the current folder (an empty temporary folder).
    env["BROWSER"] = "true"
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    with tempfile.TemporaryDirectory(prefix="llmpipe-pydoc-") as cwd:
        proc = subprocess.Popen(
            # -I -S: only the standard library is documented, whatever is installed or on PYTHONPATH,
            # so the corpus is the same on every machine with this Python version (and no heavy
            # third-party package gets imported); -u: the "Server ready" line is not held in a buffer.
            [sys.executable, "-I", "-S", "-u", "-m", "pydoc", "-p", "0", "-n", "127.0.0.1"],
            # pydoc stops serving when its stdin closes, so keep a pipe open for its lifetime.
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
        )
        try:
            url = _read_server_url(proc, timeout_s)
            _wait_until_answering(url, proc, timeout_s)
            yield url
        finally:
            _stop(proc)


def _read_server_url(proc: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"pydoc server exited before it was ready (exit code {proc.poll()})")
            buf += chunk
            match = re.search(rb"Server ready at (http://[\w.:\-]+/)", buf)
            if match:
                return match.group(1).decode()
    finally:
        sel.close()
    raise TimeoutError(f"pydoc server did not report its address within {timeout_s:.0f}s")


def _wait_until_answering(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            requests.get(url + "robots.txt", timeout=5).close()
            return
        except requests.RequestException:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pydoc server at {url} does not answer") from None
            time.sleep(0.05)


def _stop(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Stop the process we started, by its PID: terminate, then kill if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


# --------------------------------------------------------------------------------------- URLs


def normalize_url(url: str) -> str | None:
    """Canonical form used for de-duplication: no fragment, lower-case scheme and host, no default
    port, `/` for an empty path, unsafe characters percent-encoded. None for non-http(s) URLs."""
    url, _ = urldefrag(url.strip())
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    try:
        port = parts.port
    except ValueError:
        return None
    if port and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    query = quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    return urlunsplit((scheme, host, path, query, ""))


def _host(url: str) -> str:
    return urlsplit(url).netloc


class _LinkParser(HTMLParser):
    """Collects `<a href>` / `<area href>` targets, honouring `<base href>`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.base: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if not href:
            return
        if tag == "base" and self.base is None:
            self.base = href
        elif tag in ("a", "area"):
            self.links.append(href)


def extract_links(page_url: str, body: bytes, charset: str | None) -> list[str]:
    """Absolute, normalized http(s) links of an HTML page (duplicates removed, order kept)."""
    try:
        html = body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        html = body.decode("utf-8", errors="replace")
    parser = _LinkParser()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # a broken page yields the links found before the break
        pass
    base = urljoin(page_url, parser.base) if parser.base else page_url
    out: dict[str, None] = {}
    for href in parser.links:
        url = normalize_url(urljoin(base, href))
        if url:
            out[url] = None
    return list(out)


# ----------------------------------------------------------------------------------- fetching


class TokenBucket:
    """At most `rate` acquisitions per second, shared by all threads.

    Capacity is one token: starts are spaced evenly, so no one-second window sees a burst above the
    configured rate (a larger bucket would allow a burst of `capacity` on top of it).
    """

    def __init__(self, rate: float, capacity: float = 1.0) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


class _Fetcher:
    """GETs URLs with retries and backoff; one `requests.Session` per thread (they are not thread-safe)."""

    def __init__(self, cfg: CrawlConfig, bucket: TokenBucket) -> None:
        self.cfg = cfg
        self.bucket = bucket
        self.local = threading.local()
        self.sessions: list[requests.Session] = []
        self.lock = threading.Lock()

    def session(self) -> requests.Session:
        sess = getattr(self.local, "session", None)
        if sess is None:
            sess = requests.Session()
            # Only encodings `_decoded` can undo, so links can always be read from the body.
            sess.headers.update(
                {"User-Agent": self.cfg.user_agent, "Accept": "*/*", "Accept-Encoding": "gzip, deflate"}
            )
            self.local.session = sess
            with self.lock:
                self.sessions.append(sess)
        return sess

    def close(self) -> None:
        for sess in self.sessions:
            sess.close()

    def fetch(self, url: str) -> _Fetch:
        """The final attempt's request and response; connection errors and 5xx are retried."""
        result = _Fetch(url)
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
            self.bucket.acquire()
            result = self._once(url)
            retryable = result.error is not None or (result.status is not None and result.status >= 500)
            if not retryable:
                break
        return result

    def _once(self, url: str) -> _Fetch:
        out = _Fetch(url, date=_warc_date())
        try:
            # Redirects are not followed: the 3xx is recorded as it came and its target is queued as a link.
            resp = self.session().get(url, timeout=self.cfg.timeout_s, stream=True, allow_redirects=False)
        except requests.RequestException as exc:
            out.error = f"{type(exc).__name__}: {exc}"
            return out
        try:
            out.body, out.truncated = _read_raw(resp)
        except Exception as exc:  # connection reset mid-body, read timeout, bad chunking
            resp.close()
            out.error = f"{type(exc).__name__} while reading the body: {exc}"
            return out
        resp.close()
        split = urlsplit(url)
        target = split.path + (f"?{split.query}" if split.query else "")
        out.request_line = f"GET {target} HTTP/1.1"
        out.request_headers = [("Host", split.netloc)] + list(resp.request.headers.items())
        out.status = resp.status_code
        out.protocol = {10: "HTTP/1.0", 11: "HTTP/1.1"}.get(getattr(resp.raw, "version", 11), "HTTP/1.1")
        out.status_line = f"{resp.status_code} {resp.reason or ''}".rstrip()
        # The body is stored as it came over the wire less its chunked framing (urllib3 removes it),
        # so Transfer-Encoding must go; Content-Encoding stays and readers undo it.
        out.headers = [(k, v) for k, v in resp.raw.headers.items() if k.lower() != "transfer-encoding"]
        return out


def _read_raw(resp: requests.Response) -> tuple[bytes, bool]:
    chunks, total = [], 0
    for chunk in resp.raw.stream(64 * 1024, decode_content=False):
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            return b"".join(chunks)[:MAX_BODY_BYTES], True
    return b"".join(chunks), False


def _decoded(fetch: _Fetch) -> bytes:
    """The body with any Content-Encoding undone, for link extraction only."""
    enc = (fetch.header("Content-Encoding") or "").strip().lower()
    try:
        if enc in ("gzip", "x-gzip"):
            return gzip.decompress(fetch.body)
        if enc == "deflate":
            try:
                return zlib.decompress(fetch.body)
            except zlib.error:
                return zlib.decompress(fetch.body, -zlib.MAX_WBITS)
    except (OSError, EOFError, zlib.error):
        return b""
    return fetch.body


def _warc_date() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _charset(content_type: str | None) -> str | None:
    match = re.search(r"charset=[\"']?([\w.:\-]+)", content_type or "", re.I)
    return match.group(1) if match else None


# ------------------------------------------------------------------------------------------ robots


def _load_robots(fetcher: _Fetcher, start_url: str) -> robotparser.RobotFileParser:
    """robots.txt of the start host, read the way RFC 9309 says: 4xx means no rules, except 401/403
    which (like Python's parser) mean keep out; 5xx or unreachable means keep out entirely."""
    parser = robotparser.RobotFileParser()
    robots_url = urlunsplit(urlsplit(start_url)[:2] + ("/robots.txt", "", ""))
    parser.set_url(robots_url)
    fetch = fetcher.fetch(robots_url)
    if fetch.status is None or fetch.status >= 500 or fetch.status in (401, 403):
        parser.disallow_all = True
    elif fetch.status >= 400:
        parser.allow_all = True
    else:
        parser.parse(_decoded(fetch).decode("utf-8", errors="replace").splitlines())
    parser.modified()
    return parser


# ------------------------------------------------------------------------------------------- WARC


class _WarcSink:
    """Buffers records in memory and writes `crawl-NNNNN.warc.gz` files of at most `per_file` responses."""

    def __init__(self, out_uri: str, per_file: int) -> None:
        self.out_uri = out_uri
        self.per_file = per_file
        self.files: list[str] = []
        self.bytes = 0
        self.buf: io.BytesIO | None = None
        self.writer: WARCWriter | None = None
        self.responses = 0

    def add(self, fetch: _Fetch) -> None:
        if self.writer is None:
            self._open()
        writer = self.writer
        req = writer.create_warc_record(
            fetch.url,
            "request",
            payload=io.BytesIO(b""),
            length=0,
            http_headers=StatusAndHeaders(fetch.request_line, fetch.request_headers, is_http_request=True),
            warc_headers_dict={"WARC-Date": fetch.date},
        )
        warc_headers = {"WARC-Date": fetch.date}
        if fetch.truncated:
            warc_headers["WARC-Truncated"] = "length"
        resp = writer.create_warc_record(
            fetch.url,
            "response",
            payload=io.BytesIO(fetch.body),
            length=len(fetch.body),
            http_headers=StatusAndHeaders(fetch.status_line, fetch.headers, protocol=fetch.protocol),
            warc_headers_dict=warc_headers,
        )
        writer.write_request_response_pair(req, resp)
        self.responses += 1
        if self.responses >= self.per_file:
            self.flush()

    def _open(self) -> None:
        name = f"crawl-{len(self.files):05d}.warc.gz"
        self.buf = io.BytesIO()
        self.writer = WARCWriter(self.buf, gzip=True)
        info = self.writer.create_warcinfo_record(
            name, {"software": f"llmpipe-crawler/{__version__}", "format": "WARC File Format 1.0"}
        )
        self.writer.write_record(info)
        self.responses = 0

    def flush(self) -> None:
        if self.writer is None:
            return
        name = f"crawl-{len(self.files):05d}.warc.gz"
        uri = storage.join(self.out_uri, name)
        data = self.buf.getvalue()
        storage.write_bytes(uri, data)
        self.files.append(uri)
        self.bytes += len(data)
        self.buf, self.writer = None, None

    def remove_stale(self) -> None:
        """Delete `crawl-*.warc.gz` left by an earlier, longer crawl into the same folder, so the
        folder holds exactly this crawl."""
        mine = {uri.rsplit("/", 1)[-1] for uri in self.files}
        for uri in storage.list_files(self.out_uri, ".warc.gz", recursive=False):
            name = uri.rsplit("/", 1)[-1]
            if WARC_NAME.fullmatch(name) and name not in mine:
                storage.delete(uri)


# ------------------------------------------------------------------------------------------- crawl


def crawl(cfg: CrawlConfig, start_url: str, out_uri: str, progress: bool = False) -> CrawlResult:
    """Crawl one host breadth-first from `start_url`, writing every fetch as WARC under `out_uri`.

    Stops after `cfg.max_pages` successful HTML responses or when the host has no more linked pages.
    """
    start = normalize_url(start_url)
    if start is None:
        raise ValueError(f"crawl start URL must be http(s)://host/...: {start_url!r}")
    host = _host(start)
    result = CrawlResult()
    bucket = TokenBucket(cfg.rate_limit_per_s)
    fetcher = _Fetcher(cfg, bucket)
    sink = _WarcSink(out_uri, cfg.records_per_warc)
    bar = tqdm(total=cfg.max_pages, unit="page", desc="crawl", disable=not progress)
    html_pages = 0
    try:
        robots = _load_robots(fetcher, start)
        delay = robots.crawl_delay(cfg.user_agent)
        if delay:  # the site asks for fewer requests than configured
            bucket.rate = min(bucket.rate, 1.0 / float(delay))
        seen = {start}
        level = [start]
        if not robots.can_fetch(cfg.user_agent, start):
            result.robots_disallowed += 1
            level = []
        with ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="crawl") as pool:
            while level and html_pages < cfg.max_pages:
                next_level: set[str] = set()
                pos = 0
                while pos < len(level) and html_pages < cfg.max_pages:
                    # Each URL yields at most one HTML page, so fetching no more than the pages still
                    # needed means the limit can never fall in the middle of a batch: the cut is the
                    # same on every run, and nothing is fetched only to be thrown away.
                    batch = level[pos : pos + min(cfg.max_pages - html_pages, max(64, 8 * cfg.concurrency))]
                    pos += len(batch)
                    for fetch in pool.map(fetcher.fetch, batch):  # map keeps the sorted order
                        html_pages += _record(fetch, sink, result)
                        bar.update(int(fetch.is_html))
                        for link in _links_of(fetch):
                            if link in seen or _host(link) != host:
                                continue
                            seen.add(link)
                            if robots.can_fetch(cfg.user_agent, link):
                                next_level.add(link)
                            else:
                                result.robots_disallowed += 1
                level = sorted(next_level)
        sink.flush()
        sink.remove_stale()
    finally:
        fetcher.close()
        bar.close()
    result.warc_files = list(sink.files)
    result.bytes = sink.bytes
    log.info(
        "crawl of %s: %d fetched, %d failed, %d disallowed by robots.txt, %d WARC files",
        start, result.pages_fetched, result.pages_failed, result.robots_disallowed, len(sink.files),
    )
    return result


def _record(fetch: _Fetch, sink: _WarcSink, result: CrawlResult) -> int:
    """Write one fetch and count it; returns 1 when it is a successful HTML page."""
    if fetch.status is None:
        result.pages_failed += 1
        log.warning("crawl: %s failed: %s", fetch.url, fetch.error)
        return 0
    sink.add(fetch)
    if fetch.status >= 400:
        result.pages_failed += 1
    else:
        result.pages_fetched += 1
    return int(fetch.is_html)


def _links_of(fetch: _Fetch) -> list[str]:
    if fetch.status is None:
        return []
    if 300 <= fetch.status < 400:
        location = fetch.header("Location")
        target = normalize_url(urljoin(fetch.url, location)) if location else None
        return [target] if target else []
    if fetch.is_html:
        return extract_links(fetch.url, _decoded(fetch), _charset(fetch.header("Content-Type")))
    return []
