"""The project's web crawler: same host, robots.txt honoured, everything written as WARC.

The crawl is breadth-first and deterministic for a static site: each level's URLs are sorted, fetched
concurrently, and written in sorted order, and the page limit cuts at the same URL every time, so two
crawls of one server give the same URLs in the same files in the same order (only the dates and record
ids in the WARC headers differ).

A refresh (the nightly recrawl) passes the previous crawl's `pages` and a new file prefix: pages the
server answers 304 Not Modified, and pages whose body digest did not change, are not written again, so
the new WARC files hold only new and changed pages, beside the earlier crawl's files, which stay as they
are (earlier dataset versions read them).

    from llm.config import CrawlConfig
    from llm.data.crawl import crawl, pydoc_server
    with pydoc_server() as url:
        first = crawl(CrawlConfig(max_pages=50), url, "work/crawl")
        later = crawl(CrawlConfig(max_pages=50), url, "work/crawl", previous=first.pages,
                      file_prefix="crawl-g00002")
"""

from __future__ import annotations

import gzip
import hashlib
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
from llm.errors import UserError

log = logging.getLogger(__name__)

# Bodies above this are cut and the record marked `WARC-Truncated: length`, so one huge file cannot
# exhaust memory (records are held in memory until their WARC file is written).
MAX_BODY_BYTES = 32 * 1024 * 1024
HTML_TYPES = ("text/html", "application/xhtml+xml")
DEFAULT_PREFIX = "crawl"
# A prefix is one file-name segment, so a crawl can never write outside `out_uri`.
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def warc_name_pattern(prefix: str = DEFAULT_PREFIX) -> re.Pattern[str]:
    """File names a crawl with `prefix` writes: `{prefix}-NNNNN.warc.gz`.

    The number has no `-`, so a name splits at its last `-` into exactly one prefix: the files of
    `crawl` and of `crawl-g00002` can never be mistaken for each other.
    """
    return re.compile(re.escape(prefix) + r"-\d{5,}\.warc\.gz")


WARC_NAME = warc_name_pattern()  # the default prefix's files


@dataclass
class CrawlResult:
    """What a crawl did. `bytes` is the size of the WARC files written.

    Every URL requested ends in exactly one of: a connection error (`pages_failed`, no `pages` entry),
    or a final HTTP answer, which has a `pages` entry and is exactly one of `not_modified`,
    `unchanged`, `changed`, `new`. Only `changed` and `new` are written, so `changed + new` is the
    number of response records in `warc_files`. Without `previous`, every answer is `new`.

    `pages[url]` (the input of the next refresh):
      status         status of the stored copy of the page: the answer that was written to WARC, by
                     this crawl or, for a 304, by an earlier one (carried forward)
      last_status    this crawl's answer: 304 for not modified, else equal to `status`
      etag, last_modified   the validators to send next time (None when the server gave none)
      sha256         hex digest of the body with Content-Encoding undone (carried forward on 304)
      links          sorted, normalized same-host links of the page (a redirect: its target), robots
                     rules not applied (they are checked when the link is followed)
      html           a 2xx HTML page: counts towards `max_pages`
    """

    pages_fetched: int = 0  # final answers with a 2xx/3xx status, 304s and unchanged pages included
    pages_failed: int = 0  # connection errors or 4xx/5xx after the retries
    robots_disallowed: int = 0  # distinct same-host URLs robots.txt kept us from
    warc_files: list[str] = field(default_factory=list)
    bytes: int = 0
    pages: dict[str, dict] = field(default_factory=dict)
    not_modified: int = 0  # answered 304 to a conditional request: nothing written
    unchanged: int = 0  # same status, body digest, links and type as `previous[url]`: nothing written
    changed: int = 0  # written; the URL was in `previous`
    new: int = 0  # written; the URL was not in `previous`


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
    conditional: bool = False  # sent with If-None-Match / If-Modified-Since: a 304 means "not modified"

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def is_html(self) -> bool:
        mime = (self.header("Content-Type") or "").split(";")[0].strip().lower()
        return self.status is not None and 200 <= self.status < 300 and mime in HTML_TYPES


# ------------------------------------------------------------------------------------ pydoc server


# The documentation server's program. Its pages must be the same from every server process, or each
# refresh of the demo would find pages changed and rebuild everything after the crawl:
# - `pydoc.browse` rather than `-m pydoc -p 0`: the command line puts the current folder on the path,
#   and the index page lists every path entry, the temporary folder's random name among them;
# - default values and module constants are shown by their repr, which often holds a memory address
#   (`<object object at 0x7f...>`, `<PyDLL ..., handle 7f...>`), another in every process: cut out.
_PYDOC_SERVER = r"""
import pydoc, re

_ADDRESS = re.compile(r"(?:\s|&nbsp;)+(?:at(?:\s|&nbsp;)+0x|handle(?:\s|&nbsp;)+)[0-9a-f]{6,}")
_serve_page = pydoc._url_handler


def _url_handler(url, content_type="text/html"):
    page = _serve_page(url, content_type)
    return _ADDRESS.sub("", page) if content_type == "text/html" else page


pydoc._url_handler = _url_handler
pydoc.browse(0, open_browser=False, hostname="127.0.0.1")
"""


@contextmanager
def pydoc_server(timeout_s: float = 30.0) -> Iterator[str]:
    """Run Python's own documentation server on 127.0.0.1 and yield its base URL.

    It is the demo corpus: hundreds of real HTML pages, nothing downloaded. It answers every path,
    robots.txt included, with an HTML page that holds no rules, so everything is allowed.
    """
    # A fixed environment, not ours: the page of `os` shows `os.environ` whole, so anything in ours (a
    # cloud key, a token) would be crawled into the corpus, and the page would differ from run to run.
    # Serving a module's page imports it. A few stdlib modules act on import: `antigravity` opens a
    # browser (BROWSER=true makes that a no-op), GUI modules open windows (no DISPLAY), and some
    # `__main__` modules run tools in the current folder (an empty temporary folder).
    env = {"BROWSER": "true", "PATH": os.defpath, "LC_ALL": "C.UTF-8"}
    with tempfile.TemporaryDirectory(prefix="llmpipe-pydoc-") as cwd:
        proc = subprocess.Popen(
            # -I -S: only the standard library is documented, whatever is installed or on PYTHONPATH,
            # so the corpus is the same on every machine with this Python version (and no heavy
            # third-party package gets imported); -u: the "Server ready" line is not held in a buffer.
            [sys.executable, "-I", "-S", "-u", "-c", _PYDOC_SERVER],
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

    def fetch(self, url: str, headers: dict[str, str] | None = None) -> _Fetch:
        """The final attempt's request and response; connection errors and 5xx are retried.

        `headers` are added to this request only (the conditional headers of a refresh).
        """
        result = _Fetch(url)
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
            self.bucket.acquire()
            result = self._once(url, headers or {})
            retryable = result.error is not None or (result.status is not None and result.status >= 500)
            if not retryable:
                break
        return result

    def _once(self, url: str, headers: dict[str, str]) -> _Fetch:
        out = _Fetch(url, date=_warc_date(), conditional=bool(headers))
        try:
            # Redirects are not followed: the 3xx is recorded as it came and its target is queued as a link.
            resp = self.session().get(
                url, headers=headers, timeout=self.cfg.timeout_s, stream=True, allow_redirects=False
            )
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
    """The body with any Content-Encoding undone, for link extraction; b"" when it cannot be undone."""
    body = _decode(fetch)
    return b"" if body is None else body


def _decode(fetch: _Fetch) -> bytes | None:
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
        return None
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
    """Buffers records in memory and writes `{prefix}-NNNNN.warc.gz` files of at most `per_file` responses.

    Nothing added, nothing written: a crawl that finds nothing new leaves no file.
    """

    def __init__(self, out_uri: str, per_file: int, prefix: str = DEFAULT_PREFIX) -> None:
        self.out_uri = out_uri
        self.per_file = per_file
        self.prefix = prefix
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
        name = f"{self.prefix}-{len(self.files):05d}.warc.gz"
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
        name = f"{self.prefix}-{len(self.files):05d}.warc.gz"
        uri = storage.join(self.out_uri, name)
        data = self.buf.getvalue()
        storage.write_bytes(uri, data)
        self.files.append(uri)
        self.bytes += len(data)
        self.buf, self.writer = None, None

    def remove_stale(self) -> None:
        """Delete `{prefix}-*.warc.gz` left by an earlier, longer (or killed) crawl with this prefix into
        the same folder, so the prefix holds exactly this crawl. Files of other prefixes belong to
        other crawls (earlier dataset versions read them) and are never touched."""
        pattern = warc_name_pattern(self.prefix)
        mine = {uri.rsplit("/", 1)[-1] for uri in self.files}
        for uri in storage.list_files(self.out_uri, ".warc.gz", recursive=False):
            name = uri.rsplit("/", 1)[-1]
            if pattern.fullmatch(name) and name not in mine:
                storage.delete(uri)


# ------------------------------------------------------------------------------------------- crawl


def crawl(
    cfg: CrawlConfig,
    start_url: str,
    out_uri: str,
    progress: bool = False,
    previous: dict[str, dict] | None = None,
    file_prefix: str = DEFAULT_PREFIX,
) -> CrawlResult:
    """Crawl one host breadth-first from `start_url`, writing fetches as WARC under `out_uri`.

    Stops after `cfg.max_pages` HTML pages or when the host has no more linked pages. Files are named
    `{file_prefix}-NNNNN.warc.gz`; leftovers of this prefix from an earlier run are removed.

    `previous` (an earlier result's `pages`) makes this a refresh: requests for known URLs carry that
    entry's validators; a 304 is not written, stands for the stored page (its links are followed, it
    counts towards `max_pages` as the stored page did), and a body with the stored digest is not
    written either. Give a refresh a new `file_prefix`: the unchanged pages live only in the earlier
    files, which a refresh with the same prefix into the same folder would overwrite or delete.
    """
    start = normalize_url(start_url)
    if start is None:
        raise UserError(f"data.crawl.start_url must be http(s)://host/...: {start_url!r}")
    if not _PREFIX.fullmatch(file_prefix):
        raise ValueError(f"crawl file_prefix must be letters, digits, '.', '_' or '-': {file_prefix!r}")
    result = CrawlResult()
    bucket = TokenBucket(cfg.rate_limit_per_s)
    fetcher = _Fetcher(cfg, bucket)
    sink = _WarcSink(out_uri, cfg.records_per_warc, file_prefix)
    recorder = _Recorder(sink, result, previous or {}, _host(start))
    bar = tqdm(total=cfg.max_pages, unit="page", desc="crawl", disable=not progress)
    try:
        robots = _load_robots(fetcher, start)
        delay = robots.crawl_delay(cfg.user_agent)
        if delay:  # the site asks for fewer requests than configured
            bucket.rate = min(bucket.rate, 1.0 / float(delay))
        _walk(cfg, start, robots, fetcher, recorder, bar)
        sink.flush()
        sink.remove_stale()
    finally:
        fetcher.close()
        bar.close()
    result.warc_files = list(sink.files)
    result.bytes = sink.bytes
    log.info(
        "crawl of %s: %d fetched (%d new, %d changed, %d not modified, %d unchanged), %d failed, "
        "%d disallowed by robots.txt, %d WARC files",
        start, result.pages_fetched, result.new, result.changed, result.not_modified, result.unchanged,
        result.pages_failed, result.robots_disallowed, len(sink.files),
    )
    return result


def _walk(
    cfg: CrawlConfig,
    start: str,
    robots: robotparser.RobotFileParser,
    fetcher: _Fetcher,
    recorder: _Recorder,
    bar: tqdm,
) -> None:
    """The breadth-first walk: each level sorted, fetched concurrently, recorded in sorted order."""
    result = recorder.result
    seen = {start}
    level = [start]
    if not robots.can_fetch(cfg.user_agent, start):
        result.robots_disallowed += 1
        level = []

    def get(url: str) -> _Fetch:
        return fetcher.fetch(url, _conditional_headers(recorder.previous.get(url)))

    html_pages = 0
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
                for fetch in pool.map(get, batch):  # map keeps the sorted order
                    links, is_page = recorder.record(fetch)
                    html_pages += is_page
                    bar.update(int(is_page))
                    _enqueue(links, seen, next_level, robots, cfg.user_agent, result)
            level = sorted(next_level)


def _enqueue(
    links: list[str],
    seen: set[str],
    next_level: set[str],
    robots: robotparser.RobotFileParser,
    agent: str,
    result: CrawlResult,
) -> None:
    """Queue the links not seen before; each disallowed one is counted once."""
    for link in links:
        if link in seen:
            continue
        seen.add(link)
        if robots.can_fetch(agent, link):
            next_level.add(link)
        else:
            result.robots_disallowed += 1


def _conditional_headers(prev: dict | None) -> dict[str, str]:
    """The validators of the stored copy; none known (or a new URL) means a plain GET."""
    headers = {}
    if prev and prev.get("etag"):
        headers["If-None-Match"] = prev["etag"]
    if prev and prev.get("last_modified"):
        headers["If-Modified-Since"] = prev["last_modified"]
    return headers


class _Recorder:
    """Turns each final answer into its `pages` entry, counts it, and writes it unless the previous
    crawl already holds the same page."""

    def __init__(self, sink: _WarcSink, result: CrawlResult, previous: dict[str, dict], host: str) -> None:
        self.sink = sink
        self.result = result
        self.previous = previous
        self.host = host

    def record(self, fetch: _Fetch) -> tuple[list[str], bool]:
        """Returns the page's same-host links and whether it counts towards `max_pages`."""
        if fetch.status is None:
            self.result.pages_failed += 1
            log.warning("crawl: %s failed: %s", fetch.url, fetch.error)
            return [], False
        if fetch.status >= 400:
            self.result.pages_failed += 1
        else:
            self.result.pages_fetched += 1
        prev = self.previous.get(fetch.url)
        # Checked before any 3xx handling: a 304 to our conditional request is no redirect, it says
        # "the copy you have is current" (a 304 nobody asked for is recorded like any other 3xx).
        if fetch.status == 304 and fetch.conditional and prev is not None:
            entry = _carried_forward(prev, fetch)
            self.result.not_modified += 1
        else:
            entry = _entry(fetch, self.host)
            self._write_unless_unchanged(fetch, entry, prev)
        self.result.pages[fetch.url] = entry
        return entry["links"], entry["html"]

    def _write_unless_unchanged(self, fetch: _Fetch, entry: dict, prev: dict | None) -> None:
        if prev is not None and _same_content(entry, prev):
            self.result.unchanged += 1
            return
        self.sink.add(fetch)
        if prev is None:
            self.result.new += 1
        else:
            self.result.changed += 1


def _entry(fetch: _Fetch, host: str) -> dict:
    body = _decode(fetch)
    return {
        "status": fetch.status,
        "last_status": fetch.status,
        "etag": fetch.header("ETag"),
        "last_modified": fetch.header("Last-Modified"),
        # What the page says, not its wire form (gzip output can differ run to run); an undecodable
        # body is hashed as it came, so two different broken bodies still differ.
        "sha256": hashlib.sha256(fetch.body if body is None else body).hexdigest(),
        "links": sorted({link for link in _links_of(fetch, body or b"") if _host(link) == host}),
        "html": fetch.is_html,
    }


def _carried_forward(prev: dict, fetch: _Fetch) -> dict:
    """The stored page's entry, as this 304 confirms it (copied: the caller's `previous` is not changed)."""
    entry = dict(prev, last_status=304, links=list(prev.get("links", [])), html=bool(prev.get("html")))
    # A 304 carries the validators the stored copy now has (RFC 9111 4.3.4); keep the old ones if not.
    for key, name in (("etag", "ETag"), ("last_modified", "Last-Modified")):
        if fetch.header(name):
            entry[key] = fetch.header(name)
    return entry


def _same_content(entry: dict, prev: dict) -> bool:
    """Status and links count too: a redirect's body is empty whatever its target, and a page that
    turned from text/plain into HTML has the same digest but is a different page to the crawl."""
    return (
        entry["status"] == prev.get("status")
        and entry["sha256"] == prev.get("sha256")
        and entry["links"] == list(prev.get("links", []))
        and entry["html"] == bool(prev.get("html"))
    )


def _links_of(fetch: _Fetch, body: bytes) -> list[str]:
    """Links of a final answer; `body` is the decoded body."""
    if fetch.status is None:
        return []
    if 300 <= fetch.status < 400:
        location = fetch.header("Location")
        target = normalize_url(urljoin(fetch.url, location)) if location else None
        return [target] if target else []
    if fetch.is_html:
        return extract_links(fetch.url, body, _charset(fetch.header("Content-Type")))
    return []
