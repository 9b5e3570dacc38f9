"""`feed` sources in JSON Feed and RSS 1.0 (RDF): NPR's real JSON Feed, and feeds written here in the
shape their specs give (element and member names cited where used), read with the same meta and the
same per-feed state as RSS 2.0 and Atom; malformed ones quarantined with the reason."""

from __future__ import annotations

import functools
import json
import shutil
from http.server import SimpleHTTPRequestHandler

import pytest

from llm.config import SourceConfig
from llm.data.readers import is_quarantine, plan_inputs, read_unit
from llm.data.sources.feed_parse import FeedError, parse_feed
from tests.http_site import serve

SITE_ROOT = "http://blog.notmyidea.org/"
CLOSED = {"http": "http://127.0.0.1:9/"}  # every link to a closed loopback port: pages are out of reach


def _source(folder, tmp_path, **feed) -> SourceConfig:
    return SourceConfig(kind="feed", name="news", uri=str(folder), feed={"store_dir": str(tmp_path / "store"),
                                                                        "rate_limit_per_s": 1000, **feed})


def _records(source: SourceConfig, tmp_path) -> list[dict]:
    return [r for unit in plan_inputs([source], str(tmp_path / "raw" / "crawl")) for r in read_unit(unit)]


def test_npr_s_real_json_feed_gives_the_meta_rss_and_atom_give(shared_data, tmp_path):
    folder = tmp_path / "feeds"
    folder.mkdir()
    real = shared_data / "news" / "feeds" / "real" / "npr_technology.jsonfeed.json"
    shutil.copy(real, folder)  # found by the default patterns (`*.json`)
    doc = json.loads(real.read_text("utf-8"))
    records = _records(_source(folder, tmp_path, url_rewrites=CLOSED), tmp_path)
    assert len(records) == len(doc["items"]) == 25 and not any(is_quarantine(r) for r in records)
    metas = [json.loads(r["meta"]) for r in records]
    assert {m["feed_title"] for m in metas} == {"Technology"} and {m["feed_format"] for m in metas} == {"json"}
    first = metas[0]
    assert first["entry_id"] == "1050315385" and first["entry_link"] == doc["items"][0]["url"]
    assert first["entry_title"] == "Keller Rinaudo: How can delivery drones save lives?"
    assert first["published"] == "2021-10-29T14:26:00+00:00"  # `date_published` 10:26:00-04:00
    assert records[0]["created"] == first["published"]
    # robots.txt out of reach keeps the pages out; the items' `content_html` is read instead.
    assert {m["body"] for m in metas} == {"entry_content"}
    assert records[0]["payload"].decode() == doc["items"][0]["content_html"]

    # Per-feed state: an unchanged feed captures nothing; one new item is the only new record.
    assert _records(_source(folder, tmp_path, url_rewrites=CLOSED), tmp_path) == records
    doc["items"].insert(0, {"id": "new-1", "url": "https://www.npr.org/new", "content_text": "Fresh news."})
    (folder / real.name).write_text(json.dumps(doc), encoding="utf-8")
    again = _records(_source(folder, tmp_path, url_rewrites=CLOSED), tmp_path)
    new = [json.loads(r["meta"])["entry_id"] for r in again if r not in records]
    assert new == ["new-1"] and len(again) == 26


def test_json_feed_1_1_items_without_id_url_or_html(tmp_path):
    """Items as JSON Feed 1.1 allows them: a number for `id` (read as its text), only `external_url`,
    only `content_text` (escaped into HTML for the extract step), only `date_modified`, and neither `id`
    nor `url` (an id from the item's content, stable across refreshes)."""
    feed = {"version": "https://jsonfeed.org/version/1.1", "title": "Notes", "home_page_url": "https://n.example/",
            "items": [{"id": 7, "external_url": "https://elsewhere.example/a", "title": "Linked",
                       "content_text": "a < b & c", "date_modified": "2024-03-01T08:00:00Z"},
                      {"summary": "Only a summary.", "date_published": "not a date"}]}
    folder = tmp_path / "feeds"
    folder.mkdir()
    (folder / "notes.json").write_text(json.dumps(feed), encoding="utf-8")
    records = _records(_source(folder, tmp_path, url_rewrites=CLOSED), tmp_path)
    assert len(records) == 2 and not any(is_quarantine(r) for r in records)
    (linked, bare) = [json.loads(r["meta"]) for r in records]
    assert linked["entry_id"] == "7" and linked["entry_link"] == "https://elsewhere.example/a"
    assert linked["published"] == "2024-03-01T08:00:00+00:00"
    assert records[0]["payload"] == b"<p>a &lt; b &amp; c</p>"
    assert bare["entry_id"].startswith("sha256:") and bare["entry_link"] is None and bare["published"] is None
    assert records[1]["payload"] == b"<p>Only a summary.</p>"
    assert _records(_source(folder, tmp_path, url_rewrites=CLOSED), tmp_path) == records  # read once


RSS1 = """<?xml version="1.0" encoding="utf-8"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/"
         xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:content="http://purl.org/rss/1.0/modules/content/">
  <channel rdf:about="{root}index.rdf">
    <title>Alexis' log (RSS 1.0)</title>
    <link>{root}</link>
    <description>The blog, in RSS 1.0.</description>
    <items><rdf:Seq><rdf:li rdf:resource="{root}second-article.html"/><rdf:li rdf:resource="{root}nowhere.html"/>
    </rdf:Seq></items>
  </channel>
  <item rdf:about="{root}second-article.html">
    <title>Second article</title>
    <link>{root}second-article.html</link>
    <description>This is some article, in english</description>
    <dc:date>2012-02-29T00:00:00+01:00</dc:date>
  </item>
  <item rdf:about="urn:note:2">
    <title>A missing page</title>
    <link>{root}nowhere.html</link>
    <content:encoded>&lt;p&gt;Its own content.&lt;/p&gt;</content:encoded>
    <dc:date>2012-03-01</dc:date>
  </item>
</rdf:RDF>
"""


def test_rss_1_0_items_are_followed_to_their_pages(shared_data, tmp_path):
    handler = functools.partial(type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                                directory=str(shared_data / "news" / "blog"))
    folder = tmp_path / "feeds"
    folder.mkdir()
    (folder / "blog.rdf").write_text(RSS1.format(root=SITE_ROOT), encoding="utf-8")
    with serve(handler) as url:
        records = _records(_source(folder, tmp_path, url_rewrites={SITE_ROOT: url}), tmp_path)
    assert len(records) == 2 and not any(is_quarantine(r) for r in records)
    page, fallback = records
    (meta, other) = json.loads(page["meta"]), json.loads(fallback["meta"])
    assert meta["feed_title"] == "Alexis' log (RSS 1.0)" and meta["feed_format"] == "rss1"
    assert meta["entry_id"] == meta["entry_link"] == SITE_ROOT + "second-article.html"  # `rdf:about`
    assert meta["published"] == "2012-02-28T23:00:00+00:00" and meta["body"] == "page"
    assert page["payload"] == (shared_data / "news" / "blog" / "second-article.html").read_bytes()
    assert other["entry_id"] == "urn:note:2" and other["published"] == "2012-03-01T00:00:00+00:00"
    assert other["body"] == "entry_content" and "HTTP 404" in other["page_error"]
    assert fallback["payload"] == b"<p>Its own content.</p>"  # `content:encoded` before `description`


MALFORMED = {
    "truncated.json": (b'{"version": "https://jsonfeed.org/version/1.1", "items": [', "not valid JSON: "),
    "list.json": (b"[]", "JSON Feed: the document is not a JSON object (list)"),
    "no-version.json": (b'{"title": "x", "items": []}', "JSON Feed: `version` is None"),
    "rss-version.json": (b'{"version": "2.0", "title": "x", "items": []}', "JSON Feed: `version` is '2.0'"),
    "no-items.json": (b'{"version": "https://jsonfeed.org/version/1", "title": "x"}', "JSON Feed: `items` is missing or not an array"),
    "item-string.json": (b'{"version": "https://jsonfeed.org/version/1", "title": "x", "items": ["a"]}',
                         "JSON Feed: items[0] is not an object (str)"),
    "title-number.json": (b'{"version": "https://jsonfeed.org/version/1.1", "title": "x", "items": '
                          b'[{"id": "1", "title": 5}]}', "JSON Feed: items[0].title is not a string (int)"),
    "no-channel.rdf": (b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
                       b'xmlns="http://purl.org/rss/1.0/"><item rdf:about="u"><title>t</title></item></rdf:RDF>',
                       "RSS 1.0 (RDF) document without a <channel> element"),
    "unclosed.rdf": (b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><channel>',
                     "not well-formed XML: no element found"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_the_parser_names_what_is_wrong(name):
    data, reason = MALFORMED[name]
    with pytest.raises(FeedError) as err:
        parse_feed(data)
    assert str(err.value).startswith(reason)


def test_malformed_json_and_rdf_feeds_are_quarantined_with_the_reason(tmp_path):
    folder = tmp_path / "feeds"
    folder.mkdir()
    for name, (data, _) in MALFORMED.items():
        (folder / name).write_bytes(data)
    records = _records(_source(folder, tmp_path), tmp_path)
    errors = {r["location"].split("#")[0].rsplit("/", 1)[-1]: r["error"] for r in records}
    assert all(is_quarantine(r) for r in records) and set(errors) == set(MALFORMED)
    for name, (_, reason) in MALFORMED.items():
        assert errors[name].startswith(f"malformed feed: {reason}"), (name, errors[name])
    # A malformed feed leaves no state that would hide its entries once it is fixed.
    (folder / "no-items.json").write_bytes(b'{"version": "https://jsonfeed.org/version/1", "title": "x", '
                                           b'"items": [{"id": "a", "content_text": "fixed"}]}')
    fixed = [r for r in _records(_source(folder, tmp_path), tmp_path) if not is_quarantine(r)]
    assert [json.loads(r["meta"])["entry_id"] for r in fixed] == ["a"]
