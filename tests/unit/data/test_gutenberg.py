"""The `gutenberg` source kind on the real e-books of the development data: boilerplate of every era
cut, header fields parsed, encodings detected, EPUBs read in spine order and corrupt ones quarantined."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pytest

from llm.config import ExtractConfig, SourceConfig
from llm.data import schema
from llm.data.extract import ExtractStep
from llm.data.readers import is_quarantine, plan_inputs, read_unit

# (file, title, author, language, release date, e-book number, the book's first and last lines)
BOOKS = [
    ("pg11_alice_in_wonderland.txt", "Alice's Adventures in Wonderland", "Lewis Carroll", "English", "March, 1994",
     11, "ALICE'S ADVENTURES IN WONDERLAND", "THE END"),
    ("pg8868_botchan.txt", "Botchan (Master Darling)", "Kin-nosuke Natsume", "English", "September, 2005", 8868,
     "BOTCHAN (MASTER DARLING)", "[R: Rad]"),
    ("pg1993_loc_workshop_lcet10.txt", "LOC WORKSHOP ON ELECTRONIC TEXTS", None, None, None, None,
     "WORKSHOP ON ELECTRONIC TEXTS", "[A few of the italics (when used for emphasis) were replaced by CAPS mh]"),
    ("pg1992_paradise_lost_plrabn12.txt", "Paradise Lost", "John Milton", None, "February 1992", None,
     "Paradise Lost", "[The End]"),
]


def _read(path: Path, **options) -> list[dict]:
    source = SourceConfig(kind="gutenberg", name="books", uri=str(path), gutenberg=options)
    return [r for unit in plan_inputs([source], "/nonexistent") for r in read_unit(unit)]


def _book(path: Path, **options) -> tuple[str, dict]:
    (record,) = _read(path, **options)
    assert not is_quarantine(record), record.get("error")
    assert record["content_type"] == "text" and record["charset"] == "utf-8"
    return record["payload"].decode("utf-8"), json.loads(record["meta"])


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _licence_lines(books: Path) -> set[str]:
    """Every distinctive line of the real licence blocks: none may be left in a book's text."""
    lines = set()
    for block in (books / "boilerplate").glob("*.txt"):
        lines |= {ln for ln in _lines(block.read_text("utf-8")) if len(ln) > 30}
    alice_licence = (books / "pg11_alice_in_wonderland_license_part.txt").read_text()
    return lines | {ln for ln in _lines(alice_licence) if len(ln) > 30}


@pytest.fixture(scope="module")
def books(shared_data: Path) -> Path:
    return shared_data / "books"


@pytest.mark.parametrize("name,title,author,language,released,number,first,last", BOOKS)
def test_real_books_lose_their_boilerplate_and_keep_their_header_fields(
        books, name, title, author, language, released, number, first, last) -> None:
    text, meta = _book(books / name)
    lines = _lines(text)
    assert lines[0] == first and lines[-1] == last
    assert "Project Gutenberg" not in text and "gutenberg.org" not in text.lower()
    assert not _licence_lines(books) & set(lines)
    assert meta["boilerplate"] == "stripped" and 0 <= meta["removed_share"] < 0.1
    expected = {"title": title, "author": author, "language": language, "release_date": released,
                "ebook_number": number}
    assert {k: meta.get(k) for k in expected} == expected
    assert meta["encoding"] in ("utf-8", "ascii") and meta["path"] == name


def test_the_original_alice_file_with_its_licence_gives_the_same_book(books, tmp_path) -> None:
    book, licence = "pg11_alice_in_wonderland.txt", "pg11_alice_in_wonderland_license_part.txt"
    whole = (books / book).read_bytes() + (books / licence).read_bytes()
    (tmp_path / "11.txt").write_bytes(whole)
    assert _book(tmp_path / "11.txt")[0] == _book(books / "pg11_alice_in_wonderland.txt")[0]


def test_licence_files_without_a_book_leave_no_text(books) -> None:
    """The licence blocks alone (and Alice's separate licence part) are recognised as holding no book:
    an empty document, dropped as empty by the normalize step and so counted."""
    files = sorted((books / "boilerplate").glob("*.txt")) + [books / "pg11_alice_in_wonderland_license_part.txt"]
    for path in files:
        text, meta = _book(path)
        assert (text, meta["boilerplate"]) == ("", "licence_only"), path.name


def _modernised(books: Path) -> str:
    """Alice in the 2020s layout: `THE` in the markers, lower-case `Release date`, `eBook #`."""
    text = (books / "pg11_alice_in_wonderland.txt").read_bytes().decode("utf-8-sig")  # CRLF kept
    text = text.replace("Title: Alice's Adventures in Wonderland", "Title: Alice's Adventures\r\n       in Wonderland")
    text = text.replace("Posting Date: June 25, 2008 [EBook #11]\r\nRelease Date: March, 1994",
                        "Release date: June 25, 2008 [eBook #11]\r\n                Most recently updated: 2021")
    return text.replace("START OF THIS PROJECT", "START OF THE PROJECT").replace("END OF THIS PROJECT", "END OF THE PROJECT")


def test_current_markers_and_the_1990s_small_print_are_cut(books, tmp_path) -> None:
    alice = _book(books / "pg11_alice_in_wonderland.txt")[0]
    modern = _modernised(books) + (books / "boilerplate" / "license.txt").read_text("utf-8")
    modern = modern.replace("End of Project Gutenberg's", "End of the Project Gutenberg EBook of")
    (tmp_path / "modern.txt").write_bytes(modern.encode("utf-8"))
    text, meta = _book(tmp_path / "modern.txt")
    assert text == alice and meta["release_date"] == "June 25, 2008" and meta["ebook_number"] == 11
    assert meta["title"] == "Alice's Adventures in Wonderland"

    milton = _book(books / "pg1992_paradise_lost_plrabn12.txt")[0]
    small_print = (books / "boilerplate" / "small-print.txt").read_text("utf-8")
    nineties = ("The Project Gutenberg Etext of Paradise Lost, by John Milton\n\n"
                "***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***\n" + small_print
                + "\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n"
                + "This etext was prepared by a volunteer\nfrom the 1674 edition.\n\n" + milton
                + "\n\nEnd of the Project Gutenberg Etext of Paradise Lost\n")
    (tmp_path / "nineties.txt").write_text(nineties)
    text, meta = _book(tmp_path / "nineties.txt")
    assert text == milton and meta["title"] == "Paradise Lost" and meta["author"] == "John Milton"


@pytest.mark.parametrize("marker,at", [
    ("*** START OF THE PROJECT GUTENBERG EBOOK PARADISE REGAINED ***", 0.4),  # the book's first 40% cut
    ("End of the Project Gutenberg EBook of Paradise Lost, Book II", 0.2),  # its last 80% cut
])
def test_markers_that_would_cut_most_of_a_book_keep_it_whole(books, tmp_path, marker, at) -> None:
    """A marker line quoted inside a book would cut much of it away: the book is kept whole and
    flagged, unless the allowed share is raised."""
    lines = _book(books / "pg1992_paradise_lost_plrabn12.txt")[0].splitlines()
    cut = int(len(lines) * at)
    quoted = "\n".join(lines[:cut] + [marker] + lines[cut:])
    (tmp_path / "quoted.txt").write_text(quoted)
    text, meta = _book(tmp_path / "quoted.txt")
    assert text == quoted and meta["boilerplate"] == "kept_overcut" and meta["removed_share"] > 0.3
    text, meta = _book(tmp_path / "quoted.txt", max_strip_share=0.95)
    assert meta["boilerplate"] == "stripped" and len(text) < (1 - min(at, 1 - at) + 0.01) * len(quoted)
    text, meta = _book(tmp_path / "quoted.txt", strip_boilerplate=False)
    assert text == quoted and meta["boilerplate"] == "not_stripped"


@pytest.mark.parametrize("declared,encoding,expected,source", [
    ("ISO-8859-1", "latin-1", "latin-1", "declared"),
    (None, "latin-1", "latin-1", "fallback"),
    ("UTF-8", "latin-1", "latin-1", "fallback"),  # the declaration is wrong: the bytes are not UTF-8
    ("ISO-8859-1", "cp1252", "cp1252", "declared"),  # curly quotes (0x93, 0x94) in a "Latin-1" file
    ("UTF-8", "utf-8", "utf-8", "declared"),
])
def test_encodings_are_detected(books, tmp_path, declared, encoding, expected, source) -> None:
    text = (books / "pg11_alice_in_wonderland.txt").read_bytes().decode("utf-8-sig")
    text = text.replace("Language: English", "Language: English" + (f"\r\n\r\nCharacter set encoding: {declared}"
                                                                       if declared else ""))
    text = text.replace("'Oh dear!", "«Oh déar!").replace("Alice started", "Alice started, Müller-like,")
    if encoding == "cp1252":
        text = text.replace("'and what is the use of a book,'", "\u201cand what is the use of a book,\u201d")
    (tmp_path / "book.txt").write_bytes(text.encode(encoding))
    book, meta = _book(tmp_path / "book.txt")
    assert (meta["encoding"], meta["encoding_source"]) == (expected, source)
    assert "«Oh déar!" in book and "Müller-like" in book and "\ufffd" not in book
    assert ("\u201cand what is the use of a book,\u201d" in book) == (encoding == "cp1252")


# --------------------------------------------------------------------------------------------- EPUB


def test_epub_chapters_in_spine_order_become_one_html_document(books) -> None:
    (record,) = _read(books / "epub" / "childrens-literature.epub")
    meta = json.loads(record["meta"])
    assert record["content_type"] == "html"
    assert {k: meta[k] for k in ("title", "author", "language", "date", "identifier", "ebook_number")} == {
        "title": "Children's Literature", "author": "Charles Madison Curry; Erle Elsworth Clippinger",
        "language": "en", "date": "2008-05-20T00:00:00+00:00",
        "identifier": "http://www.gutenberg.org/ebooks/25545", "ebook_number": 25545}
    out = ExtractStep(ExtractConfig()).apply(pa.Table.from_pylist([record], schema.RAW_SCHEMA))
    (text,) = out.kept.column("text").to_pylist()
    lines = _lines(text)
    assert lines[0] == "SECTION IV FAIRY STORIES—MODERN FANTASTIC TALES" and lines[-1] == "The Black Brothers."
    assert "\n169\n" not in text and len(text.split()) > 50_000  # page numbers left out
    assert meta["chapters"] == 2 and b"THE CONTENTS" not in record["payload"]  # cover and s04, not the nav


def test_epub_chapters_follow_the_spine_not_the_manifest_or_the_archive(books, tmp_path) -> None:
    good = books / "epub" / "childrens-literature.epub"
    with zipfile.ZipFile(good) as z:
        opf = z.read("EPUB/package.opf").decode()
    opf = opf.replace('<item href="s04.xhtml" id="s04" media-type="application/xhtml+xml"/>',
                      '<item href="s04.xhtml" id="s04" media-type="application/xhtml+xml"/>'
                      '<item href="preface%20one.xhtml" id="pre" media-type="application/xhtml+xml"/>')
    opf = opf.replace('<itemref idref="s04"/>', '<itemref idref="pre"/><itemref idref="s04"/>')
    preface = b'<html xmlns="http://www.w3.org/1999/xhtml"><body><h1>A PREFACE BEFORE SECTION IV</h1></body></html>'
    path = _rezip(good, tmp_path / "book.epub", replace={"EPUB/package.opf": opf.encode()})
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("EPUB/preface one.xhtml", preface)
    (record,) = _read(path)
    out = ExtractStep(ExtractConfig()).apply(pa.Table.from_pylist([record], schema.RAW_SCHEMA))
    lines = _lines(out.kept.column("text")[0].as_py())
    assert lines[:2] == ["A PREFACE BEFORE SECTION IV", "SECTION IV FAIRY STORIES—MODERN FANTASTIC TALES"]


def _rezip(src: Path, dst: Path, drop: str = "", replace: dict | None = None) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename != drop:
                zout.writestr(info, (replace or {}).get(info.filename, zin.read(info)))
    return dst


def test_corrupt_epubs_are_quarantined_with_the_reason_and_counted(books, tmp_path) -> None:
    good = books / "epub" / "childrens-literature.epub"
    folder = tmp_path / "epubs"
    folder.mkdir()
    (folder / "invalid.epub").write_bytes((books / "epub" / "invalid.epub").read_bytes())
    (folder / "truncated.epub").write_bytes(good.read_bytes()[:5000])
    _rezip(good, folder / "no-opf.epub", drop="EPUB/package.opf")
    _rezip(good, folder / "no-chapter.epub", drop="EPUB/s04.xhtml")
    _rezip(good, folder / "bad-xml.epub", replace={"EPUB/package.opf": b"<package><spine>"})
    (folder / "empty.epub").write_bytes(b"")
    reasons = {Path(r["location"]).name: r["error"] for r in _read(folder)}
    assert all(r.startswith("corrupt EPUB: ") for name, r in reasons.items() if name != "empty.epub")
    assert "spine item 'cover' is not in the manifest" in reasons["invalid.epub"]
    assert "not a zip archive" in reasons["truncated.epub"]
    assert "package file (EPUB/package.opf) is missing" in reasons["no-opf.epub"]
    assert "spine item 's04' (EPUB/s04.xhtml) is missing" in reasons["no-chapter.epub"]
    assert "not well-formed XML" in reasons["bad-xml.epub"]
    assert reasons["empty.epub"] == "empty file"


def test_ingest_accounts_for_every_book(books, tmp_path) -> None:
    """The whole books folder through the ingest stage: read = kept + dropped + quarantined, the
    licence-only files dropped as empty, the broken EPUB quarantined, no licence text kept."""
    import pyarrow.parquet as pq

    from llm.config import build_config
    from llm.data.dataset import read_manifest
    from llm.data.ingest import run_ingest
    from llm.executor import LocalExecutor

    cfg = build_config({}, [f"data.sources=[{{kind: gutenberg, name: books, uri: '{books}'}}]",
                            f"work_dir={tmp_path / 'work'}", "tracking.enabled=false", "data.pii.enabled=false",
                            "data.langid.enabled=false"])
    out = tmp_path / "docs"
    run_ingest(cfg, str(tmp_path / "no-crawl"), str(out), LocalExecutor())
    manifest = read_manifest(str(out))
    counts = manifest["totals"]["counts"]
    assert counts["read"] == 12 and counts["quarantined"] == 1 and counts["kept"] == 5
    assert counts["dropped"] == {"empty_after_normalize": 6}
    assert counts["read"] == counts["kept"] + sum(counts["dropped"].values()) + counts["quarantined"]
    kept = pa.concat_tables([pq.read_table(out / s["files"]["data"]) for s in manifest["shards"] if s["rows"]])
    licence = _licence_lines(books)
    for text in kept.column("text").to_pylist():
        assert not licence & set(_lines(text)) and "Project Gutenberg" not in text


def test_a_binary_file_named_txt_is_quarantined_by_the_extract_step(books, tmp_path) -> None:
    """Latin-1 decodes any bytes, so the reader cannot tell; the extract step's binary check does."""
    (tmp_path / "book.txt").write_bytes(gzip.compress((books / "pg8868_botchan.txt").read_bytes()))
    (record,) = _read(tmp_path / "book.txt")
    out = ExtractStep(ExtractConfig()).apply(pa.Table.from_pylist([record], schema.RAW_SCHEMA))
    assert out.kept.num_rows == 0 and "binary" in out.quarantined.column("error")[0].as_py()
