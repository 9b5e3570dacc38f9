"""RSS 2.0, RSS 1.0 (RDF), Atom 1.0 and JSON Feed (1 and 1.1) documents as a feed title and its
entries. XML is parsed with `defusedxml` (no entity expansion, no external resources: a feed is
untrusted input); a document whose first character is `{` or `[` is read as a JSON Feed.

`parse_feed` raises `FeedError` with the parser's reason for a document that is not well-formed XML
or JSON, is none of these formats, is an RSS document without its `<channel>`, or a JSON Feed whose
required members (`version`, `title`, `items`) are missing or of the wrong type.
"""

from __future__ import annotations

import hashlib
import html
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from xml.etree.ElementTree import Element, ParseError, tostring

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

_ATOM = "{http://www.w3.org/2005/Atom}"
_CONTENT = "{http://purl.org/rss/1.0/modules/content/}encoded"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_RSS1 = "{http://purl.org/rss/1.0/}"
_DC_DATE = "{http://purl.org/dc/elements/1.1/}date"
_JSON_FEED_VERSION = "https://jsonfeed.org/version/"  # + `1` or `1.1`


class FeedError(ValueError):
    """A feed document that cannot be read; the message is the reason."""


@dataclass(frozen=True)
class Entry:
    """One feed entry: its id (the link when the feed gives none), title, page link, publication
    date (ISO 8601, None when absent or unreadable) and its own HTML content or summary ("" if none)."""

    id: str
    title: str
    link: str | None
    published: str | None
    content_html: str


@dataclass(frozen=True)
class Feed:
    """A parsed feed: its format (`rss`, `rss1`, `atom` or `json`), title and entries in document order."""

    format: str
    title: str
    entries: list[Entry]


def parse_feed(data: bytes) -> Feed:
    """The feed in `data`; `FeedError` naming the parser's reason when it cannot be read."""
    if not data.strip():
        raise FeedError("empty document")
    if data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):  # JSON; XML begins with `<`
        return _json_feed(data)
    try:
        root = fromstring(data)
    except ParseError as exc:
        raise FeedError(f"not well-formed XML: {exc}") from None
    except DefusedXmlException as exc:  # entity declarations, external references
        raise FeedError(f"refused XML construct: {exc}") from None
    if root.tag == "rss":
        return _rss(root)
    if root.tag == f"{_ATOM}feed":
        return _atom(root)
    if root.tag == f"{_RDF}RDF":
        return _rss1(root)
    raise FeedError(f"not an RSS, Atom or JSON feed: root element <{root.tag}>")


def _content_id(el: Element) -> str:
    """An id for an entry that gives neither id nor link: a digest of its markup, the same on every
    refresh while the entry is unchanged, so it is still counted (and fetched from its own content)."""
    return "sha256:" + hashlib.sha256(tostring(el)).hexdigest()


def _text(el: Element | None) -> str:
    return "".join(el.itertext()).strip() if el is not None else ""


def _rss(root: Element) -> Feed:
    channel = root.find("channel")
    if channel is None:
        raise FeedError("RSS document without a <channel> element")
    entries = []
    for item in channel.findall("item"):
        link = _text(item.find("link")) or None
        guid = _text(item.find("guid")) or link or _content_id(item)
        content = _text(item.find(_CONTENT)) or _text(item.find("description"))
        entries.append(Entry(guid, _text(item.find("title")), link, _rfc822(_text(item.find("pubDate"))), content))
    return Feed("rss", _text(channel.find("title")), entries)


def _rss1(root: Element) -> Feed:
    """RSS 1.0 (web.resource.org/rss/1.0/spec): `<rdf:RDF>` holds one `<channel>` and, beside it (not
    inside it), the `<item rdf:about="...">` elements, each with `title`, `link`, `description`, and the
    date from the Dublin Core module's `dc:date` (W3CDTF, an ISO 8601 profile)."""
    channel = root.find(f"{_RSS1}channel")
    if channel is None:
        raise FeedError("RSS 1.0 (RDF) document without a <channel> element")
    entries = []
    for item in root.findall(f"{_RSS1}item"):
        link = _text(item.find(f"{_RSS1}link")) or None
        item_id = (item.get(f"{_RDF}about") or "").strip() or link or _content_id(item)
        content = _text(item.find(_CONTENT)) or _text(item.find(f"{_RSS1}description"))
        entries.append(Entry(item_id, _text(item.find(f"{_RSS1}title")), link, _iso(_text(item.find(_DC_DATE))),
                             content))
    return Feed("rss1", _text(channel.find(f"{_RSS1}title")), entries)


def _json_feed(data: bytes) -> Feed:
    """JSON Feed (jsonfeed.org/version/1.1): an object with `version`, `title` and `items`; each item has
    `id` (a string; numbers are taken as their text, as the spec asks), `url` (the permalink; else
    `external_url`), `title`, `content_html` / `content_text` / `summary`, and `date_published`
    (RFC 3339), else `date_modified`."""
    try:
        doc = json.loads(data)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8/16/32
        raise FeedError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FeedError(f"JSON Feed: the document is not a JSON object ({type(doc).__name__})")
    version = doc.get("version")
    if not isinstance(version, str) or not version.startswith(_JSON_FEED_VERSION):
        raise FeedError(f"JSON Feed: `version` is {version!r}, not a {_JSON_FEED_VERSION}... URL")
    title, items = doc.get("title", ""), doc.get("items")
    if not isinstance(title, str):
        raise FeedError(f"JSON Feed: `title` is not a string ({type(title).__name__})")
    if not isinstance(items, list):
        raise FeedError("JSON Feed: `items` is missing or not an array")
    entries = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise FeedError(f"JSON Feed: items[{n}] is not an object ({type(item).__name__})")
        fields = {k: item.get(k) for k in ("id", "url", "external_url", "title", "content_html", "content_text",
                                           "summary", "date_published", "date_modified")}
        wrong = sorted(k for k, v in fields.items() if v is not None and not isinstance(v, str)
                       and not (k == "id" and isinstance(v, (int, float)) and not isinstance(v, bool)))
        if wrong:
            raise FeedError(f"JSON Feed: items[{n}].{wrong[0]} is not a string ({type(fields[wrong[0]]).__name__})")
        link = (fields["url"] or fields["external_url"] or "").strip() or None
        item_id = str(fields["id"]).strip() if fields["id"] is not None else ""
        item_id = item_id or link or "sha256:" + hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()
        # The entry's own content is HTML for the extract step: plain text is escaped into it.
        content = (fields["content_html"] or "").strip() or _text_html(fields["content_text"] or fields["summary"])
        published = _iso((fields["date_published"] or fields["date_modified"] or "").strip())
        entries.append(Entry(item_id, (fields["title"] or "").strip(), link, published, content))
    return Feed("json", title.strip(), entries)


def _text_html(text: str | None) -> str:
    """Plain text as an HTML paragraph ("" for none)."""
    return f"<p>{html.escape(text.strip())}</p>" if text and text.strip() else ""


def _atom(root: Element) -> Feed:
    entries = []
    for entry in root.findall(f"{_ATOM}entry"):
        link = _atom_link(entry)
        entry_id = _text(entry.find(f"{_ATOM}id")) or link or _content_id(entry)
        published = _text(entry.find(f"{_ATOM}published")) or _text(entry.find(f"{_ATOM}updated"))
        content = _text(entry.find(f"{_ATOM}content")) or _text(entry.find(f"{_ATOM}summary"))
        entries.append(Entry(entry_id, _text(entry.find(f"{_ATOM}title")), link, _iso(published), content))
    return Feed("atom", _text(root.find(f"{_ATOM}title")), entries)


def _atom_link(entry: Element) -> str | None:
    """The `alternate` link (a link without `rel` is one, RFC 4287 4.2.7.2)."""
    for link in entry.findall(f"{_ATOM}link"):
        if link.get("rel", "alternate") == "alternate" and link.get("href"):
            return link.get("href").strip()
    return None


def _rfc822(value: str) -> str | None:
    """An RSS `pubDate` (RFC 822) as ISO 8601 UTC; None when it cannot be read."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat()


def _iso(value: str) -> str | None:
    """An Atom or JSON Feed date (RFC 3339) or a `dc:date` (W3CDTF) as ISO 8601 UTC; None when it cannot
    be read."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat()
