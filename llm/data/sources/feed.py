"""`feed` sources: RSS 2.0, RSS 1.0 (RDF), Atom and JSON Feed feeds followed to their entries' article pages.

Planning captures: each feed (a URL, fetched with a conditional GET, or a local feed file) is read, its
entries not seen before are followed to their pages with the crawler's fetcher (robots.txt, rate limit,
timeout, retries), and what came back is written as one capture file, `<feed-digest>-NNNNN.jsonl.gz`,
in the source's store folder (`feed.store_dir`, default `raw/feeds/<source>` beside the crawl). Beside
it, `<feed-digest>.json` keeps the feed's state: ETag, Last-Modified, content digest and seen entry ids.
Capture files are never rewritten, so each is one input unit whose shard later runs reuse; a refresh
that finds nothing new writes nothing and every shard is reused.

Reading a capture yields each fetched page as HTML for the extract step (as the WARC reader does), with
meta: feed_url, feed_title, entry_id, entry_title, entry_link, published (ISO 8601), body (`page`, or
`entry_content` when the page could not be fetched and `feed.fallback_to_content` used the entry's own
HTML). An entry with neither is quarantined with the fetch error, and so is a malformed feed, with the
parser's reason, and a feed that cannot be fetched. An entry left unfetched stays pending in the state:
every refresh tries it again (a new quarantine entry each time it fails), even when the feed is unchanged.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from dataclasses import asdict
from typing import Iterator
from urllib.parse import urlsplit

from llm import storage
from llm.config import CrawlConfig, SourceConfig
from llm.data.raw_records import InputUnit, _BadRecord, _describe, _doc, _quarantine
from llm.data.sources.feed_parse import Entry, Feed, FeedError, parse_feed
from llm.errors import UserError

DEFAULT_PATTERNS = ("*.xml", "*.rss", "*.atom", "*.rdf", "*.json")


def store_dir(source: SourceConfig, crawl_uri: str) -> str:
    """Where a source's captures and feed state live."""
    if source.feed.store_dir:
        return storage.absolute(source.feed.store_dir).rstrip("/")
    return storage.join(storage.absolute(crawl_uri).rstrip("/").rsplit("/", 1)[0], "feeds", source.name)


def capture_feeds(source: SourceConfig, crawl_uri: str) -> str:
    """Fetch what is new in every feed of `source` into capture files; returns the store folder."""
    from llm.data.crawl import TokenBucket, _Fetcher

    if not source.uri:
        raise UserError(f"source {source.name!r} (feed): `uri` is required: a feed URL or a folder of feed files")
    if _is_url(source.uri) and (urlsplit(source.uri).username or urlsplit(source.uri).password):
        # The feed URL is stored on every document and in the state file: no credentials in it.
        raise UserError(f"source {source.name!r} (feed): `uri` must not hold a user name or password")
    opts = source.feed
    cfg = CrawlConfig(rate_limit_per_s=opts.rate_limit_per_s, timeout_s=opts.timeout_s, user_agent=opts.user_agent)
    fetcher = _Fetcher(cfg, TokenBucket(cfg.rate_limit_per_s))
    store = store_dir(source, crawl_uri)
    robots: dict[str, object] = {}
    try:
        for location in _feed_locations(source):
            _capture_one(location, source, store, fetcher, robots)
    finally:
        fetcher.close()
    return store


def plan_captures(source: SourceConfig, crawl_uri: str) -> tuple[str, list[str]]:
    """(store folder, sorted capture files) of `source`, after capturing what is new in its feeds."""
    store = capture_feeds(source, crawl_uri)
    files = sorted(storage.list_files(store, ".jsonl.gz", recursive=False)) if storage.exists(store) else []
    if not files:
        raise UserError(f"source {source.name!r} (feed): no entry, page or error captured from {source.uri}")
    return store, files


def _feed_locations(source: SourceConfig) -> list[str]:
    if _is_url(source.uri):
        return [source.uri]
    from llm.data.readers import _source_files

    return _source_files(source, "")[1]


def _is_url(uri: str) -> bool:
    return urlsplit(uri).scheme in ("http", "https")


def _rewrite(url: str, rewrites: dict[str, str]) -> str:
    for prefix, target in rewrites.items():
        if url.startswith(prefix):
            return target + url[len(prefix):]
    return url


def _capture_one(location: str, source: SourceConfig, store: str, fetcher, robots: dict) -> None:
    digest = hashlib.sha256(location.encode()).hexdigest()[:16]
    state_uri = storage.join(store, f"{digest}.json")
    state = json.loads(storage.read_text(state_uri)) if storage.exists(state_uri) else {"seen": []}
    data, error = _read_feed(location, state, fetcher)
    if error is not None:
        _write_capture(store, digest, [{"type": "feed_error", "feed_url": location, "error": error, "raw": ""}])
        return
    records: list[dict] = []
    seen = set(state["seen"])
    pending = [Entry(**e) for e in state.get("pending", [])]
    feed = Feed(state.get("feed_format", ""), state.get("feed_title", ""), [])
    content_digest = hashlib.sha256(data).hexdigest() if data is not None else None
    # None: 304 Not Modified; the same digest: the same bytes as last time (a local file, or a server
    # without validators). Either way only the entries still pending are tried again.
    if content_digest is not None and content_digest != state.get("sha256"):
        state["sha256"] = content_digest
        try:
            feed = parse_feed(data)
        except FeedError as exc:
            records.append({"type": "feed_error", "feed_url": location, "error": f"malformed feed: {exc}",
                            "raw": base64.b64encode(data[:4096]).decode()})
        else:
            waiting = {e.id for e in pending}
            pending += [e for e in feed.entries if e.id not in seen and e.id not in waiting]
    still_pending = []
    for entry in pending:
        record = _entry_record(location, feed, entry, source, fetcher, robots)
        records.append(record)
        if record["type"] == "entry":
            seen.add(entry.id)
        else:
            still_pending.append(asdict(entry))
    _write_capture(store, digest, records)
    # Written after the capture: a run killed in between fetches those entries again, never loses them.
    state.update(feed_url=location, feed_title=feed.title, feed_format=feed.format, seen=sorted(seen),
                 pending=still_pending)
    storage.write_text(state_uri, json.dumps(state, indent=1, sort_keys=True))


def _write_capture(store: str, digest: str, records: list[dict]) -> None:
    """One new capture file of the feed named by `digest`; nothing when there is nothing new."""
    if not records:
        return
    n = len(storage.list_files(store, ".jsonl.gz", recursive=False)) if storage.exists(store) else 0
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    storage.write_bytes(storage.join(store, f"{digest}-{n:05d}.jsonl.gz"), gzip.compress(lines.encode(), mtime=0))


def _read_feed(location: str, state: dict, fetcher) -> tuple[bytes | None, str | None]:
    """(the feed's bytes, None); (None, None) when a conditional GET says it has not changed; (None,
    reason) when it could not be fetched (retried on the next refresh: the state is left as it was)."""
    if not _is_url(location):
        return storage.read_bytes(location), None
    from llm.data.crawl import _conditional_headers, _decode

    fetch = fetcher.fetch(location, _conditional_headers(state))
    if fetch.status == 304:
        return None, None
    if fetch.status is None or not 200 <= fetch.status < 300:
        return None, f"feed not fetched: {fetch.error or f'HTTP {fetch.status}'}"
    body = _decode(fetch)
    if body is None:
        return None, f"feed not fetched: undecodable Content-Encoding {fetch.header('Content-Encoding')!r}"
    state.update(etag=fetch.header("ETag"), last_modified=fetch.header("Last-Modified"))
    return body, None


def _entry_record(location: str, feed: Feed, entry: Entry, source: SourceConfig, fetcher, robots: dict) -> dict:
    meta = {"feed_url": location, "feed_title": feed.title, "feed_format": feed.format, "entry_id": entry.id,
            "entry_title": entry.title, "entry_link": entry.link, "published": entry.published}
    page, error = _fetch_page(entry.link, source, fetcher, robots) if entry.link else (None, "entry has no link")
    if page is not None:
        return {"type": "entry", "meta": {**meta, "body": "page"}, **page}
    if source.feed.fallback_to_content and entry.content_html:
        body = base64.b64encode(entry.content_html.encode()).decode()
        return {"type": "entry", "meta": {**meta, "body": "entry_content", "page_error": error},
                "url": entry.link, "charset": "utf-8", "body_b64": body}
    return {"type": "entry_error", "meta": meta, "url": entry.link, "error": error}


def _fetch_page(link: str, source: SourceConfig, fetcher, robots: dict) -> tuple[dict | None, str | None]:
    """({url, charset, body_b64}, None) for an HTML page fetched; (None, reason) otherwise."""
    from llm.data.crawl import _charset, _decode, _load_robots

    url = _rewrite(link, source.feed.url_rewrites)
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
    if origin not in robots:
        robots[origin] = _load_robots(fetcher, url)
    if not robots[origin].can_fetch(fetcher.cfg.user_agent, url):
        return None, "disallowed by robots.txt"
    fetch = fetcher.fetch(url)
    if fetch.status is None:
        return None, f"fetch failed: {fetch.error}"
    if not fetch.is_html:
        return None, f"HTTP {fetch.status} {fetch.header('Content-Type') or 'no Content-Type'}, not an HTML page"
    body = _decode(fetch)
    if body is None:
        return None, f"undecodable Content-Encoding {fetch.header('Content-Encoding')!r}"
    return {"url": link, "charset": _charset(fetch.header("Content-Type")),
            "body_b64": base64.b64encode(body).decode()}, None


def read_capture(unit: InputUnit, uri: str) -> Iterator[dict]:
    """Raw documents (HTML for the extract step) and quarantine entries of one capture file."""
    rel = unit.relative(uri)
    with storage.open_read(uri) as fh, gzip.open(fh, "rt", encoding="utf-8") as lines:
        for n, line in enumerate(lines):
            try:
                record = json.loads(line)
            except ValueError as exc:
                yield _quarantine(unit, uri, rel, n, f"corrupt capture line: {_describe(exc)}", line.encode(),
                                  where="line")
                continue
            if record["type"] == "feed_error":
                yield _quarantine(unit, record["feed_url"], rel, n, record["error"],
                                  base64.b64decode(record["raw"]), where="line")
            elif record["type"] == "entry_error":
                meta = record["meta"]
                yield _quarantine(unit, record["url"] or meta["feed_url"], rel, n,
                                  f"entry {meta['entry_id']!r}: page not fetched: {record['error']}", where="line")
            else:
                try:
                    yield _doc(unit, rel, n, url=record["url"], created=record["meta"]["published"],
                               meta=record["meta"], payload=base64.b64decode(record["body_b64"]),
                               content_type="html", charset=record["charset"])
                except _BadRecord as exc:
                    yield _quarantine(unit, uri, rel, n, str(exc), line.encode(), where="line")
