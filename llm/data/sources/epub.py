"""EPUB 2/3 books as one HTML document: the spine's XHTML items in reading order, for the extract step.

The reading order is the package's: `META-INF/container.xml` names the package (OPF) file, whose spine
lists manifest items. Each item's `<body>` becomes one `<section>` of the joined document, so the
extract step turns the book into text the way it does every HTML page. The navigation document (a table
of contents) and printed page numbers (`epub:type="pagebreak"`) are left out: they are not the book's
prose.
"""

from __future__ import annotations

import html
import io
import posixpath
import re
import xml.etree.ElementTree as ET
import zipfile
import zlib
from dataclasses import dataclass
from urllib.parse import unquote

from llm.data.raw_records import MAX_RECORD_BYTES

_CONTAINER_NS = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_OPF_NS = "{http://www.idpf.org/2007/opf}"
_DC_NS = "{http://purl.org/dc/elements/1.1/}"
_XHTML_TYPES = {"application/xhtml+xml", "text/html"}
_BODY = re.compile(r"<body\b[^>]*>(.*)</body\s*>", re.S | re.I)
_PAGEBREAK = re.compile(r"<(\w+)\b[^>]*epub:type=[\"'][^\"']*pagebreak[^\"']*[\"'][^>]*?(?:/>|>[^<]*</\1\s*>)", re.I)
_XML_ENCODING = re.compile(rb"^\s*<\?xml[^>]*encoding=[\"']([A-Za-z0-9_.:-]+)[\"']")
_GUTENBERG_NUMBER = re.compile(r"gutenberg\.org/(?:ebooks/|files/)?(\d+)|^(?:urn:)?gutenberg:?\D*(\d+)$", re.I)


class EpubError(ValueError):
    """An EPUB that cannot be read as a book; the message says what is wrong and where."""


@dataclass
class EpubBook:
    """A book read from an EPUB: the joined HTML and the package's metadata."""

    html: str
    meta: dict


def read_epub_book(data: bytes) -> EpubBook:
    """The book in an EPUB's bytes; raises `EpubError` for a bad zip, a missing container, package or
    spine item, or XML that does not parse."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as exc:
        raise EpubError(f"not a zip archive: {exc}") from None
    with archive:
        container = _xml(archive, "META-INF/container.xml", "container")
        rootfile = next((r.get("full-path") for r in container.iter(f"{_CONTAINER_NS}rootfile") if r.get("full-path")),
                        None)
        if rootfile is None:
            raise EpubError("META-INF/container.xml names no package (OPF) file")
        package = _xml(archive, rootfile, "package")
        manifest = {item.get("id"): item for item in package.iter(f"{_OPF_NS}item")}
        spine = package.find(f"{_OPF_NS}spine")
        refs = [] if spine is None else [ref.get("idref") for ref in spine.iter(f"{_OPF_NS}itemref")]
        if not refs:
            raise EpubError(f"{rootfile}: the package has no spine (no reading order)")
        base = posixpath.dirname(rootfile)
        sections = []
        for idref in refs:
            item = manifest.get(idref)
            if item is None:
                raise EpubError(f"{rootfile}: spine item {idref!r} is not in the manifest")
            if item.get("media-type") not in _XHTML_TYPES or "nav" in (item.get("properties") or "").split():
                continue
            path = posixpath.normpath(posixpath.join(base, unquote(item.get("href") or "")))
            sections.append(_body(_member(archive, path, f"spine item {idref!r}")))
        meta = _package_meta(package)
    meta["chapters"] = len(sections)
    title = html.escape(meta.get("title", ""))
    joined = "".join(f"<section>{s}</section>\n" for s in sections)
    return EpubBook(f"<html><head><title>{title}</title></head><body>\n{joined}</body></html>", meta)


def _member(archive: zipfile.ZipFile, name: str, what: str) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise EpubError(f"{what} ({name}) is missing from the archive") from None
    if info.file_size > MAX_RECORD_BYTES:  # a small member can decompress to gigabytes
        raise EpubError(f"{what} ({name}) is larger than {MAX_RECORD_BYTES} bytes")
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise EpubError(f"{what} ({name}) cannot be read: {exc}") from None


def _xml(archive: zipfile.ZipFile, name: str, what: str) -> ET.Element:
    try:
        return ET.fromstring(_member(archive, name, f"{what} file"))
    except ET.ParseError as exc:
        raise EpubError(f"{what} file {name} is not well-formed XML: {exc}") from None


def _body(document: bytes) -> str:
    """The inside of an XHTML item's `<body>` (the whole item where it has none), page numbers taken out."""
    declared = _XML_ENCODING.match(document)
    try:
        text = document.decode(declared.group(1).decode("ascii") if declared else "utf-8", errors="replace")
    except LookupError:  # an unknown encoding name
        text = document.decode("utf-8", errors="replace")
    match = _BODY.search(text)
    return _PAGEBREAK.sub("", match.group(1) if match else text)


def _package_meta(package: ET.Element) -> dict:
    """title, author (creators joined by `; `), language, date, identifier and, for a Project Gutenberg
    book, ebook_number, from the package's Dublin Core metadata."""
    metadata = package.find(f"{_OPF_NS}metadata")
    if metadata is None:
        return {"epub_version": package.get("version")}

    def values(name: str) -> list[str]:
        return [" ".join(e.text.split()) for e in metadata.iter(f"{_DC_NS}{name}") if e.text and e.text.strip()]

    meta: dict = {"epub_version": package.get("version")}
    for key, name in (("title", "title"), ("language", "language"), ("date", "date")):
        if values(name):
            meta[key] = values(name)[0]
    if values("creator"):
        meta["author"] = "; ".join(values("creator"))
    unique = package.get("unique-identifier")
    identifiers = [(e.get("id"), " ".join(e.text.split())) for e in metadata.iter(f"{_DC_NS}identifier")
                   if e.text and e.text.strip()]
    if identifiers:
        meta["identifier"] = next((v for i, v in identifiers if unique and i == unique), identifiers[0][1])
    for _, value in identifiers:
        number = _GUTENBERG_NUMBER.search(value)
        if number:
            meta["ebook_number"] = int(number.group(1) or number.group(2))
            break
    return meta
