"""The `feed` source on real feeds: a generated blog served on loopback, whose Atom and RSS entries are
followed to their article pages, a refresh that fetches nothing again, and malformed feeds quarantined."""

from __future__ import annotations

import functools
import json
import re
from http.server import SimpleHTTPRequestHandler

import pytest

from llm.config import ExtractConfig, SourceConfig
from llm.data.extract import decode_payload, extract_html
from llm.data.readers import is_quarantine, plan_inputs, read_unit
from llm.errors import UserError
from tests.http_site import serve

SITE_ROOT = "http://blog.notmyidea.org/"


def _records(units) -> list[dict]:
    return [r for unit in units for r in read_unit(unit)]


@pytest.fixture()
def blog(shared_data):
    """The blog served on a free loopback port; yields (root URL, list of requested paths, paths to
    answer 404 for)."""
    requests: list[str] = []
    hidden: set[str] = set()

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            if self.path in hidden:
                self.send_error(404)
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    handler = functools.partial(Handler, directory=str(shared_data / "news" / "blog"))
    with serve(handler) as url:
        yield url, requests, hidden


def _source(uri: str, tmp_path, **feed) -> SourceConfig:
    return SourceConfig(kind="feed", name="news", uri=uri, feed={"store_dir": str(tmp_path / "store"),
                                                                "rate_limit_per_s": 1000, **feed})


def test_atom_feed_over_http_is_followed_to_pages_and_refresh_fetches_nothing(blog, shared_data, tmp_path):
    url, requests, _ = blog
    source = _source(f"{url}feeds/all.atom.xml", tmp_path, url_rewrites={SITE_ROOT: url})
    units = plan_inputs([source], str(tmp_path / "raw" / "crawl"))
    docs = _records(units)
    assert docs and not any(is_quarantine(d) for d in docs)
    feed_xml = (shared_data / "news" / "blog" / "feeds" / "all.atom.xml").read_text("utf-8")
    assert len(docs) == feed_xml.count("<entry>")
    for doc in docs:
        meta = json.loads(doc["meta"])
        assert meta["feed_title"] == "Alexis' log" and meta["feed_url"] == source.uri
        assert meta["body"] == "page" and doc["url"] == meta["entry_link"]
        assert meta["entry_link"].startswith(SITE_ROOT) and meta["entry_id"].startswith("tag:blog.notmyidea.org")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", meta["published"])
        page = shared_data / "news" / "blog" / meta["entry_link"][len(SITE_ROOT):]
        assert doc["payload"] == page.read_bytes() and doc["content_type"] == "html"
    second = next(d for d in docs if json.loads(d["meta"])["entry_title"] == "Second article")
    assert json.loads(second["meta"])["published"] == "2012-02-28T23:00:00+00:00"  # +01:00 in the feed
    # resiliparse: trafilatura discards pages this short as boilerplate
    text = extract_html(decode_payload(second["payload"], second["charset"]), ExtractConfig(extractor="resiliparse"))
    assert "This is some article, in english" in text
    pages = {p for p in requests if p.endswith(".html")}
    assert len(pages) == len(docs)

    requests.clear()
    again = plan_inputs([source], str(tmp_path / "raw" / "crawl"))
    assert requests == ["/feeds/all.atom.xml"]  # answered 304: no page fetched again
    assert [u.shard for u in again] == [u.shard for u in units]  # the same shards, reused


def test_local_rss_feeds_are_followed_and_unchanged_feeds_fetch_nothing(blog, shared_data, tmp_path):
    url, requests, _ = blog
    feeds = shared_data / "news" / "blog" / "feeds"
    source = _source(str(feeds), tmp_path, url_rewrites={SITE_ROOT: url}, fallback_to_content=False)
    source = source.model_copy(update={"glob": "*.rss.xml"})
    records = _records(plan_inputs([source], str(tmp_path / "raw" / "crawl")))
    docs = [r for r in records if not is_quarantine(r)]
    expected = sum(p.read_text("utf-8").count("<item>") for p in feeds.glob("*.rss.xml"))
    assert len(records) == expected and docs
    assert {json.loads(d["meta"])["feed_title"] for d in docs} >= {"Alexis' log"}
    assert not any(is_quarantine(r) for r in records)  # every link is a page of the site
    state = json.loads(next((tmp_path / "store").glob("*.json")).read_text())
    assert state["seen"] and state["sha256"]

    requests.clear()
    assert _records(plan_inputs([source], str(tmp_path / "raw" / "crawl"))) == records
    assert requests == []  # unchanged local feeds: nothing fetched, the same captures read


def test_malformed_feeds_are_quarantined_with_the_parser_reason(shared_data, tmp_path):
    folder = shared_data / "news" / "feeds" / "malformed"
    bozo = {p.name for p in folder.rglob("*.xml") if re.search(r"Expect:\s+bozo", p.read_text("utf-8", "replace"))}
    bozo.add("all_things_chemical.missing-channel-tag.rss")
    # Entries of the feeds that parse link to hosts that are not there: send them to a closed port.
    source = _source(str(folder), tmp_path, url_rewrites={"http://": "http://127.0.0.1:9/"})
    records = _records(plan_inputs([source], str(tmp_path / "raw" / "crawl")))
    errors = {r["location"].split("#")[0].rsplit("/", 1)[-1]: r["error"] for r in records
              if is_quarantine(r) and r["error"].startswith("malformed feed")}
    assert bozo <= set(errors), sorted(bozo - set(errors))
    assert "mismatched tag: line 109" in errors["all_things_chemical.missing-channel-tag.rss"]
    assert "not well-formed" in errors["aaa_illformed.xml"] and "unbound prefix" in errors["undeclared_namespace.xml"]
    assert all(not is_quarantine(r) or r["error"].startswith(("malformed feed", "entry ")) for r in records)


def test_ingest_stage_reads_the_feed_and_a_refresh_reuses_every_shard(blog, shared_data, tmp_path):
    from llm.config import build_config
    from llm.data.ingest import run_ingest
    from llm.executor import LocalExecutor

    url, requests, _ = blog
    store = tmp_path / "store"
    options = f"{{store_dir: '{store}', rate_limit_per_s: 1000, url_rewrites: {{'{SITE_ROOT}': '{url}'}}}}"
    feed = f"{{kind: feed, name: news, uri: '{url}feeds/all.rss.xml', feed: {options}}}"
    cfg = build_config({}, [f"data.sources=[{feed}]"])
    first = run_ingest(cfg, str(tmp_path / "raw" / "crawl"), str(tmp_path / "docs"), LocalExecutor())
    counts, steps = first["totals"]["counts"], first["totals"]["steps"]
    items = (shared_data / "news" / "blog" / "feeds" / "all.rss.xml").read_text("utf-8").count("<item>")
    assert counts["read"] == items == steps["extract"]["read"]
    assert counts["read"] == counts["kept"] + sum(counts["dropped"].values()) + counts["quarantined"]
    assert "unsupported_content_type" not in steps["extract"]["dropped"]  # the pages reach the extractor
    requests.clear()
    second = run_ingest(cfg, str(tmp_path / "raw" / "crawl"), str(tmp_path / "docs"), LocalExecutor())
    assert requests == ["/feeds/all.rss.xml"] and second["version"] == first["version"]


@pytest.mark.parametrize("fallback", [True, False])
def test_an_unfetchable_page_falls_back_to_the_entry_content_or_is_quarantined(blog, tmp_path, fallback):
    url, requests, hidden = blog
    hidden.add("/second-article.html")
    source = _source(f"{url}feeds/all.atom.xml", tmp_path, url_rewrites={SITE_ROOT: url},
                     fallback_to_content=fallback)
    records = _records(plan_inputs([source], str(tmp_path / "raw" / "crawl")))
    link = SITE_ROOT + "second-article.html"
    (entry,) = [r for r in records if r.get("url") == link or r.get("location", "").startswith(link)]
    if fallback:
        meta = json.loads(entry["meta"])
        assert meta["body"] == "entry_content" and "HTTP 404" in meta["page_error"]
        assert entry["payload"] == b"<p>This is some article, in english</p>"
    else:
        assert is_quarantine(entry) and "page not fetched: HTTP 404" in entry["error"]
    hidden.clear()
    requests.clear()
    again = _records(plan_inputs([source], str(tmp_path / "raw" / "crawl")))
    # The feed is unchanged (304): only an entry left unfetched is tried again, and now its page is there.
    fetched = [p for p in requests if p != "/robots.txt"]  # robots.txt is read again on every run
    assert fetched == ["/feeds/all.atom.xml"] + ([] if fallback else ["/second-article.html"])
    retried = [r for r in again if r.get("url") == link]
    assert len(retried) == 1 and sum(map(is_quarantine, again)) == (0 if fallback else 1)  # the first attempt's
    assert json.loads(retried[0]["meta"])["body"] == ("entry_content" if fallback else "page")


def test_a_feed_url_with_credentials_is_refused_before_anything_is_fetched(tmp_path):
    source = _source("https://reader:s3cret@feeds.example.org/rss", tmp_path)
    with pytest.raises(UserError, match="must not hold a user name or password") as err:
        plan_inputs([source], str(tmp_path / "raw" / "crawl"))
    assert "s3cret" not in str(err.value) and not (tmp_path / "store").exists()


def test_real_feeds_fall_back_to_their_entry_content_when_pages_are_out_of_reach(shared_data, tmp_path):
    folder = shared_data / "news" / "feeds" / "real"
    # The episode and article pages are on the internet: send every link to a closed loopback port.
    source = _source(str(folder), tmp_path, url_rewrites={"http": "http://127.0.0.1:9/"})
    records = _records(plan_inputs([source], str(tmp_path / "raw" / "crawl")))
    items = sum(p.read_text("utf-8").count("<item>") for p in folder.glob("*.rss"))
    items += len(json.loads((folder / "npr_technology.jsonfeed.json").read_text("utf-8"))["items"])
    assert len(records) == items and not any(is_quarantine(r) for r in records)
    metas = [json.loads(r["meta"]) for r in records]
    assert {m["feed_title"] for m in metas} == {"All Things Chemical", "Reply All", "Technology"}
    # robots.txt unreachable means keep out (RFC 9309); some episodes have only an enclosure, no link.
    assert {m["page_error"] for m in metas} == {"disallowed by robots.txt", "entry has no link"}
    assert all(m["body"] == "entry_content" for m in metas)
    assert all(m["published"] and m["published"].endswith("+00:00") for m in metas)


def test_entries_without_id_or_link_are_counted_and_read_from_their_content(tmp_path):
    """An RSS item with neither guid nor link still becomes a document (its own content), under an id
    that stays the same on a refresh, so nothing in a feed goes uncounted and nothing is read twice."""
    feed = tmp_path / "feeds" / "bare.rss"
    feed.parent.mkdir()
    items = "".join(f"<item><title>note {i}</title><description>&lt;p&gt;text of note {i}&lt;/p&gt;</description></item>"
                    for i in range(3))
    feed.write_text(f'<?xml version="1.0"?><rss version="2.0"><channel><title>Bare</title>{items}</channel></rss>',
                    encoding="utf-8")
    source = _source(str(feed.parent), tmp_path)
    records = _records(plan_inputs([source], str(tmp_path / "raw" / "crawl")))
    metas = [json.loads(r["meta"]) for r in records]
    assert len(records) == 3 and not any(is_quarantine(r) for r in records)
    assert len({m["entry_id"] for m in metas}) == 3 and all(m["entry_id"].startswith("sha256:") for m in metas)
    assert sorted(r["payload"] for r in records) == [f"<p>text of note {i}</p>".encode() for i in range(3)]
    feed.write_text(feed.read_text("utf-8").replace("</channel>", "<item><title>late</title>"
                                                     "<description>new</description></item></channel>"), "utf-8")
    again = _records(plan_inputs([source], str(tmp_path / "raw" / "crawl")))
    new = [json.loads(r["meta"])["entry_title"] for r in again]
    assert sorted(new).count("late") == 1 and len(again) == 4  # old capture reread + one new entry
