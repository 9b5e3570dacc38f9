"""Project Gutenberg plain-text e-books: their encoding, their header fields, and the book without the
Project Gutenberg header, footer and licence.

Files from 1992 to today mark the book differently: `*** START OF THE PROJECT GUTENBERG EBOOK ... ***`
and `*** END OF ...` (2000s on, `THIS` before about 2016), `*END*THE SMALL PRINT! ...*END*` closing the
1990s licence at the top, `End of Project Gutenberg's ...` / `End of the Project Gutenberg EBook of ...`
/ `*End of The Project Gutenberg Etext of ...` before the footer, `*** START: FULL LICENSE ***` or
`***START**THE SMALL PRINT!...` where the licence follows the book. The earliest releases have no marker
at all, only release notes above the book (`This is the February 1992 Project Gutenberg release of:`).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

# The book starts after the last of these found in the first half of the file (a 1990s file has a
# `START OF` line above its small print, and the book after the small print's end).
_START = re.compile(r"^[\s*]*(?:START OF (?:THE|THIS) PROJECT GUTENBERG|END\*?\s*THE SMALL PRINT)", re.I)
# The book ends at the first of these after its start.
_END = re.compile(r"^[\s*]*(?:END OF (?:THE |THIS )?PROJECT GUTENBERG|START\**\s*:?\s*(?:FULL LICEN[CS]E|THE SMALL PRINT)"
                  r"|THE FULL PROJECT GUTENBERG LICEN[CS]E)", re.I)
# Licence text (not an end-of-book line): a file that opens with it holds no book.
_LICENCE = re.compile(r"FULL LICEN[CS]E|SMALL PRINT|FULL PROJECT GUTENBERG LICEN[CS]E", re.I)
# How the licence and the usage notice open: a short file that opens so, with no marker, holds no book.
_LICENCE_OPENING = re.compile(r'^\W*(?:Why is this "Small Print!" statement here|This e-?book is for the use of anyone '
                              r'anywhere|The Full Project Gutenberg Licen[cs]e|Updated editions will replace)', re.I)
_LICENCE_MAX_CHARS = 32 * 1024  # the longest licence (2010s full licence) is about 19 KB
# The first lines of a file without markers that say release notes come first.
_OLD_HEADER = re.compile(r"Project Gutenberg(?:'s| release of| E(?:text|book) of)", re.I)
_MENTION = re.compile(r"Project\s+Gutenberg", re.I)
# A producer's credit right after the start marker is part of the header, not of the book.
_CREDIT = re.compile(r"^\s*(?:Produced by|Prepared by|Transcribed (?:from|by)|E-?text prepared by"
                     r"|This e-?(?:text|book) was (?:prepared|produced|created))", re.I)
_DECLARED = re.compile(rb"^[ \t]*Character set encoding:[ \t]*([A-Za-z0-9_.:-]+)", re.I | re.M)
_C1_BYTES = re.compile(rb"[\x80-\x9f]")

_OLD_HEADER_LINES = 400  # release notes above a marker-less book are a page or two, never more
_OLD_HEADER_SHARE = 0.2
_LICENCE_ONLY_CHARS = 3000  # a file-naming notice and a paragraph may come before a licence


# ----------------------------------------------------------------------------------------- encoding


def decode_book(data: bytes, default: str = "latin-1") -> tuple[str, str, str]:
    """(text, encoding, how it was found: `bom`, `declared`, `valid utf-8` or `fallback`).

    A declared encoding counts only where the bytes decode in it (a file saying UTF-8 while holding
    Latin-1 bytes is common). Latin-1 with bytes 0x80-0x9F is read as cp1252: those are C1 control
    codes in Latin-1, curly quotes and dashes in cp1252, and only the latter occur in books."""
    for bom, name in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            text = data.decode("utf-8-sig" if name == "utf-8" else name, errors="replace")
            return text, name, "bom"
    declared = _DECLARED.search(data[:16384])
    if declared:
        name = _codec(declared.group(1).decode("ascii"))
        decoded = _decode_strict(data, name) if name is not None else None
        if decoded is not None:
            return decoded[0], decoded[1], "declared"
    if data.isascii():
        return data.decode("ascii"), "ascii", "valid utf-8"
    decoded = _decode_strict(data, "utf-8")
    if decoded is not None:
        return decoded[0], "utf-8", "valid utf-8"
    # cp1252 leaves five bytes undefined: a file holding one of them is Latin-1 after all.
    decoded = _decode_strict(data, _codec(default) or "latin-1") or (data.decode("latin-1"), "latin-1")
    return decoded[0], decoded[1], "fallback"


def _codec(label: str) -> str | None:
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    return "latin-1" if name == "iso8859-1" else name


def _decode_strict(data: bytes, name: str) -> tuple[str, str] | None:
    """(text, the encoding used) where `data` decodes in `name` (cp1252 for Latin-1 with 0x80-0x9F)."""
    if name == "latin-1" and _C1_BYTES.search(data):
        name = "cp1252"
    try:
        return data.decode(name), name
    except UnicodeDecodeError:
        return None


# ------------------------------------------------------------------------------------------- header

_FIELD = re.compile(r"^\s*(Title|Author|Language|Release Date|Posting Date)\s*:\s*(.*?)\s*$", re.I)
_NUMBER = re.compile(r"\[\s*E-?(?:Book|text)\s*#\s*(\d+)\s*\]", re.I)
_NAMED = re.compile(r"This file should be named (\d+)(?:-\w+)?\.(?:txt|zip)", re.I)
_OLD_TITLE = re.compile(r"^[\s*]*(?:The )?Project Gutenberg(?:'s| E-?(?:text|book) of)\s+(.+?)"
                        r"(?:,\s+by\s+(.+?))?[\s*]*$", re.I)
_RELEASE_OF = re.compile(r"This is the (.+?) Project Gutenberg release of", re.I)


def header_meta(header: str) -> dict:
    """title, author, language, release_date and ebook_number from a header, where it gives them:
    `Title:`-style fields (continued on indented lines) or, in older files, `The Project Gutenberg
    Etext of TITLE, by AUTHOR` and `This is the MONTH YEAR Project Gutenberg release of: TITLE by AUTHOR`."""
    fields: dict[str, str] = {}
    last = None
    lines = header.splitlines()
    for line in lines:
        match = _FIELD.match(line)
        if match:
            last = match.group(1).lower().replace(" ", "_")
            fields.setdefault(last, match.group(2))
        elif last in ("title", "author") and line[:1].isspace() and line.strip():
            fields[last] += " " + line.strip()
        else:
            last = None
    meta: dict = {}
    for key in ("title", "author", "language"):
        if fields.get(key):
            meta[key] = fields[key]
    date = fields.get("release_date") or fields.get("posting_date")
    if date:
        meta["release_date"] = _NUMBER.sub("", date).strip(" ,;")
    number = _NUMBER.search(header) or _NAMED.search(header)
    if number:
        meta["ebook_number"] = int(number.group(1))
    for i, line in enumerate(lines[:60]):
        old = _OLD_TITLE.match(line)
        if old and "title" not in meta:
            meta["title"] = old.group(1)
            if old.group(2):
                meta.setdefault("author", old.group(2))
        release = _RELEASE_OF.search(line)
        if release:
            meta.setdefault("release_date", release.group(1))
            following = next((ln.strip() for ln in lines[i + 1:i + 6] if ln.strip()), "")
            title, by, author = following.partition(" by ")
            meta.setdefault("title", title.strip())
            if by:
                meta.setdefault("author", author.strip())
    return meta


# -------------------------------------------------------------------------------------- boilerplate


@dataclass
class StrippedBook:
    """A book's text with the boilerplate cut (or not, and why).

    `status`: `stripped` (markers found and cut), `no_markers` (nothing recognised, text kept whole),
    `kept_overcut` (cutting would have removed more than the allowed share, text kept whole),
    `licence_only` (the file is licence text, no book: `body` is empty)."""

    body: str
    status: str
    removed_share: float  # of the file's characters, by the cut that was made or refused
    header: str  # the text above the book, where the header fields are
    markers: list[str] = field(default_factory=list)  # the marker lines the cut was made at


def strip_boilerplate(text: str, max_share: float) -> StrippedBook:
    """`text` without the header above the book's start marker (or the release notes of an
    unmarked early file), the producer's credit, and everything from the end marker on."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    start, start_marker = _book_start(lines)
    end = next((j for j in range(start, len(lines)) if _END.match(lines[j])), None)
    markers = [m for m in (start_marker, lines[end].strip() if end is not None else None) if m]
    whole = _trim(text)
    header = "".join(lines[:start]) if start else "".join(lines[:100])
    if start == 0 and _is_licence(whole, lines, offsets, end):
        return StrippedBook("", "licence_only", 1.0, header, markers)
    if not markers:
        return StrippedBook(whole, "no_markers", 0.0, header)
    start = _skip_credit(lines, start, end if end is not None else len(lines))
    body = _trim("".join(lines[start:end]))
    share = 1 - len(body) / max(1, len(whole))
    if share > max_share:
        return StrippedBook(whole, "kept_overcut", share, header, markers)
    return StrippedBook(body, "stripped", share, header, markers)


def _trim(text: str) -> str:
    """Without blank lines at either end (the first line keeps its indent) or the DOS end-of-file
    characters (Ctrl-Z) of early releases."""
    return re.sub(r"\A(?:[ \t]*\r?\n)+", "", text.rstrip().rstrip("\x1a").rstrip())


def _is_licence(whole: str, lines: list[str], offsets: list[int], end: int | None) -> bool:
    """Whether a file without a start marker is licence text alone: a licence marker near its top, or
    short text that opens as the licence or usage notice does and has no `Title:` header."""
    if end is not None and _LICENCE.search(lines[end]) and offsets[end] < _LICENCE_ONLY_CHARS:
        return True
    return (len(whole) <= _LICENCE_MAX_CHARS and bool(_LICENCE_OPENING.match(whole))
            and not re.search(r"^\s*Title:", whole, re.M))


def _book_start(lines: list[str]) -> tuple[int, str | None]:
    """(index of the first line after the header, the marker line) ; (0, None) when no header is seen."""
    half = len(lines) // 2 + 1
    found = [i for i in range(min(half, len(lines))) if _START.match(lines[i])]
    if found:
        return found[-1] + 1, lines[found[-1]].strip()
    head = [ln for ln in lines[:40] if ln.strip()][:5]
    if not any(_OLD_HEADER.search(ln) for ln in head):
        return 0, None
    # Release notes: paragraphs that speak of Project Gutenberg, a couple without between them.
    limit = min(_OLD_HEADER_LINES, int(len(lines) * _OLD_HEADER_SHARE) + 1)
    end, quiet, i = 0, 0, 0
    while i < limit and quiet < 3:
        while i < len(lines) and not lines[i].strip():
            i += 1
        j = i
        while j < len(lines) and lines[j].strip():
            j += 1
        if i >= len(lines):
            break
        if _MENTION.search(" ".join(ln.strip() for ln in lines[i:j])):
            end, quiet = j, 0
        else:
            quiet += 1
        i = j
    return (end, lines[end - 1].strip()) if end else (0, None)


def _skip_credit(lines: list[str], start: int, end: int) -> int:
    """Past a `Produced by ...` paragraph right after the start (one line where no blank line ends it
    soon: some packagers remove every blank line)."""
    i = start
    while i < end and not lines[i].strip():
        i += 1
    if i >= end or not _CREDIT.match(lines[i]):
        return start
    j = i
    while j < end and lines[j].strip() and j - i < 5:
        j += 1
    return j if j < end and not lines[j].strip() else i + 1
