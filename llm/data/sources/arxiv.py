"""arXiv source bundles as raw documents: one bundle, one document (or one quarantine entry).

A bundle is what arXiv serves as a paper's source: a tar archive (gzipped or not) of `.tex` files with
their `.bbl`/`.bib` files and figures, or a single `.tex` file, gzipped or not. `latex_document` turns
its text files into the document's text (LaTeX, math kept as written); this module opens the bundle,
names the paper, and quarantines what cannot be read: a corrupt gzip or tar stream, a bundle with no
main file, a PDF when `arxiv.read_pdf` is off (or, when on, one pypdf cannot read without repairs, or
with no text layer). Figures are never read.
"""

from __future__ import annotations

import gzip
import io
import posixpath
import re
import tarfile
import zlib
from pathlib import Path
from typing import Iterator

from llm import storage
from llm.data.raw_records import MAX_RECORD_BYTES, InputUnit, _describe, _doc, _quarantine, printable
from llm.data.sources.latex_document import TEXT_SUFFIXES, BundleError, assemble
from llm.errors import UserError

# `.pdf` too: with `arxiv.read_pdf` off a PDF is quarantined as not read, never passed over unseen.
DEFAULT_PATTERNS = ("*.tar.gz", "*.tgz", "*.tar", "*.gz", "*.tex", "*.pdf")

# arXiv identifiers as file names carry them: `2101.00001v2.tar.gz`, `arXiv-2101.00001.gz`, and the
# old scheme with the archive's name before the number (`hep-th9901001`, `math.GT0309136`).
_NEW_ID = re.compile(r"(?:arxiv[-_:.]?)?(\d{2}(?:0[1-9]|1[0-2])\.\d{4,5})(v\d+)?", re.I)
# The archives of the old scheme (1991-2007), so that `paper1234567` is not taken for an id.
_OLD_ARCHIVES = ("acc-phys adap-org alg-geom ao-sci astro-ph atom-ph bayes-an chao-dyn chem-ph cmp-lg comp-gas "
                 "cond-mat cs dg-ga funct-an gr-qc hep-ex hep-lat hep-ph hep-th math math-ph mtrl-th nlin "
                 "nucl-ex nucl-th patt-sol physics plasm-ph q-alg q-bio quant-ph solv-int supr-con").split()
_OLD_ID = re.compile(r"(?:arxiv[-_:.]?)?(%s)(\.[A-Z]{2})?[/_-]?(\d{7})(v\d+)?"
                     % "|".join(sorted(_OLD_ARCHIVES, key=len, reverse=True)))
_BUNDLE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".gz", ".tex", ".pdf")


def arxiv_id(file_name: str) -> tuple[str, str | None] | None:
    """(id, version or None) named by a bundle's file name, or None when the name holds no arXiv id."""
    stem = file_name
    for suffix in _BUNDLE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    m = _NEW_ID.fullmatch(stem)
    if m:
        return m.group(1), m.group(2)
    m = _OLD_ID.fullmatch(stem)
    if m:
        return f"{m.group(1)}{m.group(2) or ''}/{m.group(3)}", m.group(4)
    return None


def _decode(data: bytes) -> str:
    """LaTeX source as text: UTF-8, or Latin-1 (which older sources use, and which never fails)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _gunzip(data: bytes) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            out = stream.read(MAX_RECORD_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"corrupt gzip stream: {_describe(exc)}") from None
    if len(out) > MAX_RECORD_BYTES:
        raise BundleError(f"bundle decompresses to more than {MAX_RECORD_BYTES} bytes")
    return out


def _looks_like_tar(data: bytes) -> bool:
    """A POSIX (ustar) or GNU tar header at the start; pre-POSIX tar archives without one are not read."""
    return len(data) >= 512 and data[257:262] == b"ustar"


def _tar_texts(data: bytes) -> dict[str, str]:
    """The text files of a tar archive by their normalized path; figures and other files are skipped.
    An archive cut short is corrupt even where the cut falls in a figure (tarfile would stop quietly)."""
    files: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if member.offset_data + member.size > len(data):
                    raise tarfile.ReadError(f"archive ends inside {member.name!r}")
                name = posixpath.normpath(member.name.lstrip("/"))
                if not member.isfile() or name.startswith("../") or not name.lower().endswith(TEXT_SUFFIXES):
                    continue
                files[name] = _decode(tar.extractfile(member).read())
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise BundleError(f"corrupt tar archive: {_describe(exc)}") from None
    if not files:
        raise BundleError("no main file: the archive holds no .tex file")
    return files


def _pdf_text(data: bytes) -> tuple[str, dict]:
    """The text layer of a PDF, page by page, with its title and author when its metadata has them."""
    import pypdf  # checked by `_require_pdf_library` before any file is read

    try:
        # strict: without it pypdf repairs a damaged file by leaving out what it cannot find (a page
        # object whose offset is wrong vanishes with its text), and the loss would go unrecorded.
        reader = pypdf.PdfReader(io.BytesIO(data), strict=True)
        pages = [page.extract_text() or "" for page in reader.pages]
        info = reader.metadata or {}
    except Exception as exc:  # pypdf raises its own errors and plain ones for damaged files
        raise BundleError(f"unreadable PDF: {_describe(exc)}") from None
    text = "\n\n".join(p.strip() for p in pages)
    if not text.strip():
        raise BundleError(f"PDF without a text layer ({len(pages)} pages of images or vector art only)")
    meta = {"format": "pdf", "pages": len(pages)}
    if info.get("/Title"):
        meta["title"] = str(info["/Title"])
    if info.get("/Author"):
        meta["authors"] = [str(info["/Author"])]
    return text, meta


def _require_pdf_library(source_name: str) -> None:
    try:
        import pypdf  # noqa: F401
    except ImportError:
        raise UserError(f"source {source_name!r} (arxiv): arxiv.read_pdf needs the `pypdf` package, which is "
                        "not installed: pip install 'llmpipe[pdf]' (or set arxiv.read_pdf to false)") from None


def bundle_document(data: bytes, file_name: str, options) -> tuple[str, dict]:
    """(text, meta) of one bundle's bytes; `BundleError` with the reason when it cannot be read."""
    if not data:
        raise BundleError("empty file")
    if data[:2] == b"\x1f\x8b":
        inner = _gunzip(data)
        inner_name = file_name[:-3] if file_name.lower().endswith(".gz") else file_name
    else:
        inner, inner_name = data, file_name
    if inner.startswith(b"%PDF-"):
        if not options.read_pdf:
            raise BundleError("a PDF, not LaTeX source: set arxiv.read_pdf to read its text layer")
        return _pdf_text(inner)
    # By content, not by name: arXiv serves a one-file paper as a gzipped .tex, and tools that fetch
    # papers name every download `.tar.gz` all the same.
    if _looks_like_tar(inner):
        files = _tar_texts(inner)
    else:
        main = inner_name if inner_name.lower().endswith(TEXT_SUFFIXES) else inner_name + ".tex"
        files = {main: _decode(inner)}
    doc = assemble(files, options)
    return doc.text, {"format": "latex", **doc.meta}


def read_arxiv(unit: InputUnit, uri: str) -> Iterator[dict]:
    """One raw document (content type `text`: the body's LaTeX) per bundle, or one quarantine entry."""
    options = unit.source.arxiv
    if options.read_pdf:
        _require_pdf_library(unit.source.name)
    rel = unit.relative(uri)
    size = storage.size(uri)
    if size > MAX_RECORD_BYTES:
        yield _quarantine(unit, uri, rel, 0, f"bundle larger than {MAX_RECORD_BYTES} bytes", where="file",
                          size=size)
        return
    data = storage.read_bytes(uri)
    file_name = rel.rsplit("/", 1)[-1]
    try:
        text, meta = bundle_document(data, file_name, options)
    except BundleError as exc:
        yield _quarantine(unit, uri, rel, 0, str(exc), data, where="file", size=len(data))
        return
    named = arxiv_id(file_name)
    if named is not None:
        meta["arxiv_id"] = named[0]
        if named[1]:
            meta["arxiv_version"] = named[1]
    meta["path"] = printable(rel)
    url = uri if storage.is_s3(uri) else Path(uri).as_uri()
    yield _doc(unit, rel, 0, url=url, created=None, meta=meta, payload=text.encode("utf-8"),
               content_type="text", charset="utf-8")

