"""RSS 2.0 and Atom 1.0 documents as a feed title and its entries, parsed with `defusedxml` (no
entity expansion, no external resources: a feed is untrusted input).

`parse_feed` raises `FeedError` with the parser's reason for a document that is not well-formed XML,
is neither RSS 2.0 nor Atom, or is an RSS document without its `<channel>`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from xml.etree.ElementTree import Element, ParseError, tostring

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

_ATOM = "{http://www.w3.org/2005/Atom}"
_CONTENT = "{http://purl.org/rss/1.0/modules/content/}encoded"


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
    """A parsed feed: its format (`rss` or `atom`), title and entries in document order."""

    format: str
    title: str
    entries: list[Entry]


def parse_feed(data: bytes) -> Feed:
    """The feed in `data`; `FeedError` naming the parser's reason when it cannot be read."""
    if not data.strip():
        raise FeedError("empty document")
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
    raise FeedError(f"not an RSS 2.0 or Atom feed: root element <{root.tag}>")


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
    """An Atom date (RFC 3339) as ISO 8601 UTC; None when it cannot be read."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat()
