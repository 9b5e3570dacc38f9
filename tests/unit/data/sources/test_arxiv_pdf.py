"""`arxiv` sources with `read_pdf`: the text layer of PDFs written here byte by byte (PDF 1.4, ISO
32000-1: objects, a cross-reference table, a trailer; text in the standard Helvetica font), read through
the ingest reader path with the real pypdf."""

from __future__ import annotations

import builtins
import gzip
import json
import sys
from pathlib import Path

import pytest

from llm.config import PipelineConfig, SourceConfig
from llm.data.ingest import _total, build_steps, process_unit
from llm.data.readers import is_quarantine, plan_inputs, read_unit
from llm.errors import UserError

pytest.importorskip("pypdf")

PAGES = [["Scaling Laws (for) Small Models", "We measure loss against compute."],
         ["Results: the loss falls as a power law."]]


def _esc(text: str) -> str:
    """A PDF literal string's escapes (ISO 32000-1, 7.3.4.2): backslash and parentheses."""
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def pdf_bytes(pages: list[list[str]], title: str | None = None, author: str | None = None) -> bytes:
    """A valid PDF: catalog (1), page tree (2), font (3), then per page its page object and content
    stream, and an Info dictionary with `/Title` and `/Author` when given."""
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(len(pages)))
            + b"] /Count %d >>" % len(pages),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"]
    for lines in pages:
        # BT/ET: a text object; Tf: font and size; Td: start; TL: leading; Tj: show; T*: next line.
        stream = ("BT /F1 12 Tf 72 720 Td 16 TL " + " ".join(f"({_esc(line)}) Tj T*" for line in lines)
                  + " ET").encode("latin-1")
        objs.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                    b"/Contents %d 0 R >>" % (len(objs) + 2))
        objs.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    info = ""
    if title or author:
        fields = (f"/Title ({_esc(title)}) " if title else "") + (f"/Author ({_esc(author)})" if author else "")
        objs.append(f"<< {fields} >>".encode("latin-1"))
        info = f" /Info {len(objs)} 0 R"
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    # Each cross-reference entry is exactly 20 bytes: 10-digit offset, 5-digit generation, n/f, EOL.
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1) + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _read(folder: Path, **options) -> list[dict]:
    src = SourceConfig(kind="arxiv", name="papers", uri=str(folder), arxiv=options)
    return [r for unit in plan_inputs([src], "/unused") for r in read_unit(unit)]


def _by_name(records: list[dict]) -> tuple[dict[str, tuple[str, dict]], dict[str, str]]:
    """(file name -> (text, meta) of each document, file name -> error of each quarantine entry)."""
    docs, errors = {}, {}
    for r in records:
        if is_quarantine(r):
            errors[Path(r["location"]).name] = r["error"]
        else:
            meta = json.loads(r["meta"])
            docs[meta["path"]] = (r["payload"].decode("utf-8"), meta)
    return docs, errors


def test_the_text_layer_and_metadata_of_a_pdf_and_a_gzipped_pdf(tmp_path: Path) -> None:
    pdf = pdf_bytes(PAGES, title="Scaling Laws", author="A. Writer")
    (tmp_path / "2401.00001v2.pdf").write_bytes(pdf)  # found by the default patterns
    (tmp_path / "2401.00002.gz").write_bytes(gzip.compress(pdf))  # as arXiv serves a PDF-only paper
    docs, errors = _by_name(_read(tmp_path, read_pdf=True))
    assert errors == {}
    text, meta = docs["2401.00001v2.pdf"]
    assert text == ("Scaling Laws (for) Small Models\nWe measure loss against compute.\n\n"
                    "Results: the loss falls as a power law.")
    assert meta["format"] == "pdf" and meta["pages"] == 2
    assert meta["title"] == "Scaling Laws" and meta["authors"] == ["A. Writer"]
    assert meta["arxiv_id"] == "2401.00001" and meta["arxiv_version"] == "v2"
    assert docs["2401.00002.gz"][0] == text


def test_with_read_pdf_off_a_pdf_is_quarantined_not_passed_over(tmp_path: Path) -> None:
    (tmp_path / "paper.pdf").write_bytes(pdf_bytes(PAGES))
    docs, errors = _by_name(_read(tmp_path))
    assert docs == {} and "set arxiv.read_pdf" in errors["paper.pdf"]


def test_damaged_pdfs_are_quarantined_with_pypdf_s_reason(tmp_path: Path) -> None:
    good = pdf_bytes(PAGES, title="T")
    (tmp_path / "cut.pdf").write_bytes(good[: len(good) // 2])
    (tmp_path / "no-root.pdf").write_bytes(good.replace(b"/Root 1 0 R", b"/Root 9 0 R"))
    # The first page object's bytes overwritten: pypdf's repair would drop that page and its text.
    page = good.index(b"4 0 obj")
    (tmp_path / "lost-page.pdf").write_bytes(good[:page] + b"\0" * 40 + good[page + 40:])
    (tmp_path / "blank.pdf").write_bytes(pdf_bytes([[]]))
    (tmp_path / "good.pdf").write_bytes(good)
    records = _read(tmp_path, read_pdf=True)
    docs, errors = _by_name(records)
    assert set(docs) == {"good.pdf"}
    assert errors["cut.pdf"] == "unreadable PDF: PdfReadError: EOF marker not found"
    assert errors["no-root.pdf"].startswith("unreadable PDF: PdfReadError: ")
    assert errors["lost-page.pdf"].startswith("unreadable PDF: PdfReadError: ")
    assert errors["blank.pdf"].startswith("PDF without a text layer (1 pages")
    # Through the fused ingest pass: every file is one record, read = kept + dropped + quarantined.
    steps = build_steps(PipelineConfig())
    src = SourceConfig(kind="arxiv", name="papers", uri=str(tmp_path), arxiv={"read_pdf": True})
    read = quarantined = 0
    for unit in plan_inputs([src], "/unused"):
        total = _total(process_unit(unit, steps)[3])
        total.check(unit.shard)
        read, quarantined = read + total.read, quarantined + total.quarantined
    assert (read, quarantined) == (5, 4)


def test_without_pypdf_the_error_says_to_install_the_pdf_extra(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "paper.pdf").write_bytes(pdf_bytes(PAGES))
    real_import = builtins.__import__

    def no_pypdf(name, *args, **kwargs):
        if name == "pypdf" or name.startswith("pypdf."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "pypdf", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_pypdf)
    with pytest.raises(UserError, match=r"source 'papers' \(arxiv\): arxiv\.read_pdf needs the `pypdf` package.*"
                                        r"pip install 'llmpipe\[pdf\]'"):
        _read(tmp_path, read_pdf=True)
    # Off, the missing package does not matter: the PDF is quarantined as not read.
    assert "set arxiv.read_pdf" in _by_name(_read(tmp_path))[1]["paper.pdf"]
