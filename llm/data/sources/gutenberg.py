"""The `gutenberg` source kind: Project Gutenberg e-books, one document per book.

A plain-text file (`*.txt`) is decoded (`gutenberg_text.decode_book`), its header fields go to `meta`,
and the header, footer and licence are cut (`strip_boilerplate`); the document is the book's text. An
EPUB (`*.epub`) becomes one HTML document of its chapters in spine order (`epub.read_epub_book`) for the
extract step, with the package's Dublin Core fields in `meta`. An EPUB that cannot be read (not a zip,
no package file, a spine item missing) is one quarantine entry with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from llm import storage
from llm.data.raw_records import InputUnit, _doc, _quarantine, printable
from llm.data.sources.epub import EpubError, read_epub_book
from llm.data.sources.gutenberg_text import StrippedBook, decode_book, header_meta, strip_boilerplate

DEFAULT_PATTERNS = ("*.txt", "*.epub")


def read_gutenberg(unit: InputUnit, uri: str) -> Iterator[dict]:
    """One raw document per book file (an empty file yields nothing: the caller quarantines it)."""
    rel = unit.relative(uri)
    data = storage.read_bytes(uri)
    if not data:
        return
    url = uri if storage.is_s3(uri) else Path(uri).as_uri()
    meta: dict = {"path": printable(rel)}
    if uri.lower().endswith(".epub"):
        try:
            book = read_epub_book(data)
        except EpubError as exc:
            yield _quarantine(unit, uri, rel, 0, f"corrupt EPUB: {exc}", data, where="file")
            return
        yield _doc(unit, rel, 0, url=url, created=None, meta=meta | {"format": "epub"} | book.meta,
                   payload=book.html.encode("utf-8"), content_type="html", charset="utf-8")
        return
    options = unit.source.gutenberg
    text, encoding, found_by = decode_book(data, options.default_encoding)
    book = strip_boilerplate(text, options.max_strip_share)
    if not options.strip_boilerplate:  # the header is still where the meta fields come from
        book = StrippedBook(text, "not_stripped", 0.0, book.header)
    meta |= {"format": "text", "encoding": encoding, "encoding_source": found_by, "boilerplate": book.status,
             "removed_share": round(book.removed_share, 4)}
    yield _doc(unit, rel, 0, url=url, created=None, meta=meta | header_meta(book.header),
               payload=book.body.encode("utf-8"), content_type="text", charset="utf-8")
