"""The `arxiv` source kind on the real LaTeX bundles of the development data, and on bundles built
here to hold what those lack (a macro with arguments, a `.bbl`, an input cycle, corrupt archives)."""

from __future__ import annotations

import gzip
import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm.config import PipelineConfig, SourceConfig
from llm.data import schema
from llm.data.ingest import _total, build_steps, process_unit
from llm.data.readers import is_quarantine, plan_inputs, read_unit
from llm.data.sources.arxiv import arxiv_id
from llm.errors import UserError

MAIN_FILES = {
    "aastex631-sample.tar.gz": "sample631.tex",
    "acmart-sigconf-sample.tar.gz": "sample-sigconf.tex",
    "aps-revtex4-2-sample.tar.gz": "apssamp.tex",
    "cleanthesis-multifile.tar.gz": "my-thesis.tex",
    "mnras-template.tar.gz": "mnras_template.tex",
    "quantum-template.tar.gz": "quantum-template.tex",
}
UNESCAPED_PERCENT = re.compile(r"(?<!\\)%")


def _read(folder: Path, **options) -> list[dict]:
    src = SourceConfig(kind="arxiv", name="papers", uri=str(folder), arxiv=options)
    return [r for unit in plan_inputs([src], "/unused") for r in read_unit(unit)]


def _docs(records: list[dict]) -> dict[str, tuple[str, dict]]:
    """path -> (text, meta) of the documents among `records`."""
    out = {}
    for r in records:
        if not is_quarantine(r):
            meta = json.loads(r["meta"])
            out[meta["path"]] = (r["payload"].decode("utf-8"), meta)
    return out


def _tar_gz(path: Path, files: dict[str, str | bytes]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return path


def _members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


@pytest.fixture(scope="module")
def papers(shared_data: Path) -> Path:
    return shared_data / "papers"


@pytest.fixture(scope="module")
def read_papers(papers: Path) -> list[dict]:
    return _read(papers)


def test_every_real_bundle_becomes_one_document_of_its_body(papers: Path, read_papers: list[dict]) -> None:
    assert not [r for r in read_papers if is_quarantine(r)]
    pa.Table.from_pylist(read_papers, schema.RAW_SCHEMA)
    docs = _docs(read_papers)
    assert {path: meta["main_file"] for path, (_, meta) in docs.items()} == MAIN_FILES
    for path, (text, meta) in docs.items():
        main = _members(papers / path)[MAIN_FILES[path]].decode()
        # the preamble is gone: none of its command lines, and the text starts where the body does
        preamble = re.split(r"^\\begin\{document\}", main, maxsplit=1, flags=re.M)[0]
        commands = [line.strip() for line in preamble.splitlines() if line.startswith("\\") and len(line) > 12]
        # (the samples show some preamble lines again in verbatim blocks, which are kept as written)
        outside_verbatim = re.sub(r"\\begin\{verbatim\}.*?\\end\{verbatim\}", "", text, flags=re.S)
        assert commands and not [line for line in commands if line in outside_verbatim], path
        assert not text.startswith(("\\documentclass", "\\begin{document}"))
        # no comment is left; escaped percent signs are
        assert not [line for line in text.splitlines() if UNESCAPED_PERCENT.search(line)], path
        assert text.count("\\%") == main.split("\\begin{document}", 1)[1].count("\\%"), path
        assert meta["format"] == "latex" and "arxiv_id" not in meta


def test_front_matter_is_found_outside_verbatim(read_papers: list[dict]) -> None:
    docs = _docs(read_papers)
    quantum = docs["quantum-template.tar.gz"][1]
    # the sample's verbatim blocks show `\author{Author 1}` ...: those are not the paper's authors
    assert quantum["authors"] == ["Lídia del Rio", "Christian Gogolin", "Marcus Huber", "Cassandra Granade",
                                  "Johannes Jakob Meyer", "Victor V. Albert"]
    assert quantum["title"] == "Template demonstrating the quantumarticle document class"
    acm = docs["acmart-sigconf-sample.tar.gz"][1]
    assert acm["title"] == "The Name of the Title Is Hope" and "Brooke Aster, David Mehldau" not in acm["authors"]
    assert acm["abstract"].startswith("A clear and well-documented \\LaTeX\\ document")
    # \newcommand\aastex{AAS\TeX} is expanded in the title as in the body
    aas_text, aas = docs["aastex631-sample.tar.gz"]
    assert aas["title"].startswith("Template AAS\\TeX Article with Examples")
    assert "\\aastex" not in aas_text.replace("\\aastex631", "") and "AAS\\TeX" in aas_text


def test_multi_file_thesis_is_inlined_with_its_setup_macros(papers: Path, read_papers: list[dict]) -> None:
    text, meta = _docs(read_papers)["cleanthesis-multifile.tar.gz"]
    members = _members(papers / "cleanthesis-multifile.tar.gz")
    chapters = sorted(n for n in members if n.startswith("content/"))
    assert len(chapters) == 11 and sorted(meta["inputs"]) == sorted(chapters + ["my-thesis-setup.tex"])
    assert "missing_inputs" not in meta
    assert not re.search(r"\\(input|include)(?![A-Za-z])", text)
    # the chapters' text, in the main file's order
    order = [text.index(s) for s in ("\\chapter{Introduction}", "\\chapter{Related Work}", "\\chapter{Conclusion}")]
    assert order == sorted(order)
    assert "Alfred-Schrapel-Str. 7" in text and "!TEX root" not in text
    # \thesisTitle and friends, defined in the \input setup file, are expanded
    assert "\\thesisTitle" not in text and "{\\LARGE The Clean Thesis Style \\par}" in text


def test_math_is_kept_exactly_as_written(papers: Path, read_papers: list[dict]) -> None:
    docs = _docs(read_papers)
    checked = 0
    for path in ("aastex631-sample.tar.gz", "aps-revtex4-2-sample.tar.gz", "quantum-template.tar.gz"):
        main = _members(papers / path)[MAIN_FILES[path]].decode()
        body = main.split("\\begin{document}", 1)[1]
        environments = re.finditer(r"\\begin\{(equation|eqnarray|align)\*?\}.*?\\end\{\1\*?\}", body, re.S)
        blocks = [m.group() for m in environments]
        assert blocks, path
        spans = blocks + re.findall(r"(?<![\\$])\$[^$\n%]+\$", body)
        for span in spans:
            if "%" not in span:
                assert span in docs[path][0], span
                checked += 1
    assert checked > 50


def test_bibliography_is_dropped_by_default_and_kept_when_asked(papers: Path, read_papers: list[dict],
                                                                 tmp_path: Path) -> None:
    dropped = _docs(read_papers)["quantum-template.tar.gz"]
    assert dropped[1]["bibliography"] == "dropped"
    assert "\\begin{thebibliography}" not in dropped[0]
    assert "\\bibitem{howtogetdoilinksinbibliography}" not in dropped[0]
    kept = _docs(_read(papers, keep_bibliography=True))["quantum-template.tar.gz"]
    assert kept[1]["bibliography"] == "kept" and "\\bibitem{howtogetdoilinksinbibliography}" in kept[0]
    assert len(kept[0]) > len(dropped[0])
    # a bundle as arXiv keeps it: the .bbl BibTeX wrote beside the source takes \bibliography's place
    members = _members(papers / "aps-revtex4-2-sample.tar.gz")
    bbl = "\\begin{thebibliography}{1}\n\\bibitem{feyn54} R.~P. Feynman, Phys. Rev. \\textbf{94}, 262 (1954).\n" \
          "\\end{thebibliography}\n"
    folder = tmp_path / "bbl"
    folder.mkdir()
    _tar_gz(folder / "aps-with-bbl.tar.gz", {**members, "apssamp.bbl": bbl})
    with_bbl = _docs(_read(folder, keep_bibliography=True))["aps-with-bbl.tar.gz"]
    assert with_bbl[1]["bibliography"] == "kept" and "\\bibitem{feyn54} R.~P. Feynman" in with_bbl[0]
    assert "\\bibliography{apssamp}" not in with_bbl[0]
    without = _docs(_read(folder))["aps-with-bbl.tar.gz"]
    assert without[1]["bibliography"] == "dropped" and "Feynman, Phys. Rev." not in without[0]
    assert "\\bibliography{" not in without[0]


MACRO_MAIN = r"""\documentclass{article}
\newcommand{\pair}[2]{(#1, #2)}
\newcommand{\greet}[2][Hello]{#1, #2!}
\newcommand*\proj{Project X}
\def\where{the lab}
\newcommand{\loopy}{\loopy{} again}
\title{On \proj}
\begin{document}
\renewcommand{\where}{the field}
We met \pair{Ann}{Bob} in \where.   % a comment that goes
A break, then a word: end\\where.
\greet{world} and \greet[Bye]{moon}; \pair x y.
Math stays: $\pair{a}{b}$ and \[ \greet{z} \] and
\begin{equation} \where = 1 \end{equation}
A rate of 5\% is literal, \verb|% not a comment| and \loopy.
A line break\\% and a comment after it
\begin{verbatim}
\pair{u}{v} % kept as written
\end{verbatim}
\begin{comment}
gone entirely
\end{comment}
\input{sections/intro}
\include{sections/intro.tex}
\input{missing/file}
\end{document}
trailing text after the end
"""
INTRO = "% !TEX root = ../main.tex\nIntroduction by \\proj.\n\\input{sections/back}\n"
BACK = "Back again; \\input{sections/intro} would loop.\n"


def test_macros_inputs_comments_on_a_built_bundle(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    _tar_gz(folder / "2101.00001v2.tar.gz", {"main.tex": MACRO_MAIN, "sections/intro.tex": INTRO,
                                             "sections/back.tex": BACK, "fig.png": b"\x89PNG\r\n\x1a\n"})
    text, meta = _docs(_read(folder))["2101.00001v2.tar.gz"]
    assert meta["arxiv_id"] == "2101.00001" and meta["arxiv_version"] == "v2" and meta["title"] == "On Project X"
    assert "We met (Ann, Bob) in the field." in text and "end\\\\where." in text
    assert "Hello, world! and Bye, moon!; (x, y)." in text
    assert "$\\pair{a}{b}$" in text and "\\[ \\greet{z} \\]" in text and "\\where = 1" in text
    assert "5\\% is literal, \\verb|% not a comment|" in text
    assert "\\pair{u}{v} % kept as written" in text
    assert "A line break\\\\\n" in text and "a comment after it" not in text
    assert "a comment that goes" not in text and "gone entirely" not in text and "trailing text" not in text
    assert "\\newcommand" not in text and "\\renewcommand" not in text
    # a macro that uses itself stops after the bounded passes
    assert "\\loopy{} again{} again{} again." in text
    assert text.count("Introduction by Project X.") == 2 and text.count("Back again") == 2
    assert meta["inputs"] == ["sections/intro.tex", "sections/back.tex"] * 2
    assert meta["missing_inputs"] == ["sections/intro.tex (input cycle or too deep)"] * 2 + ["missing/file"]
    # without expansion the macros stay as written
    raw, _ = _docs(_read(folder, expand_macros=False))["2101.00001v2.tar.gz"]
    assert "\\pair{Ann}{Bob}" in raw


def test_single_tex_files_gzipped_or_plain(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "hep-th9901001.gz").write_bytes(gzip.compress(MACRO_MAIN.encode()))
    (folder / "paper.tex").write_text(MACRO_MAIN)
    docs = _docs(_read(folder))
    assert docs["hep-th9901001.gz"][1]["arxiv_id"] == "hep-th/9901001"
    assert docs["hep-th9901001.gz"][1]["main_file"] == "hep-th9901001.tex"
    assert docs["paper.tex"][0] == docs["hep-th9901001.gz"][0]
    assert arxiv_id("apssamp.tar.gz") is None and arxiv_id("arXiv-2312.12345.tar.gz") == ("2312.12345", None)
    assert arxiv_id("math.GT0309136v1.gz") == ("math.GT/0309136", "v1")
    assert arxiv_id("paper1234567.tex") is None and arxiv_id("1234.5678.tar.gz") is None


def test_corrupt_bundles_are_quarantined_and_counted(papers: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    good = (papers / "aps-revtex4-2-sample.tar.gz").read_bytes()
    shutil.copy(papers / "aps-revtex4-2-sample.tar.gz", folder / "good.tar.gz")
    (folder / "truncated.tar.gz").write_bytes(good[: len(good) // 2])
    (folder / "noise.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)
    (folder / "not-a-tar.tar.gz").write_bytes(gzip.compress(b"plain words, no archive " * 40))
    tar = gzip.decompress(good)
    (folder / "cut-tar.tar.gz").write_bytes(gzip.compress(tar[: len(tar) // 2]))  # whole gzip of half a tar
    _tar_gz(folder / "bib-only.tar.gz", {"refs.bib": "@article{x, title={T}}\n", "fig.eps": "%!PS\n"})
    _tar_gz(folder / "no-main.tar.gz", {"chapter.tex": "\\section{A}\nText only.\n"})
    (folder / "empty.tex").write_bytes(b"")
    (folder / "paper.gz").write_bytes(gzip.compress(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"))
    records = _read(folder)
    errors = {Path(r["location"]).name: r["error"] for r in records if is_quarantine(r)}
    assert set(_docs(records)) == {"good.tar.gz"}
    assert errors["truncated.tar.gz"].startswith("corrupt gzip stream")
    assert errors["noise.tar.gz"].startswith("corrupt gzip stream")
    # a gzipped file that is no tar is read as one .tex file (arXiv serves one-file papers so)
    assert errors["not-a-tar.tar.gz"].startswith("no main file: none of the 1 .tex files")
    assert errors["cut-tar.tar.gz"].startswith("corrupt tar archive")
    assert errors["bib-only.tar.gz"] == "no main file: the archive holds no .tex file"
    assert errors["no-main.tar.gz"].startswith("no main file: none of the 1 .tex files")
    assert errors["empty.tex"] == "empty file" and "arxiv.read_pdf" in errors["paper.gz"]
    assert all(r["records"] == 1 and r["records_known"] for r in records if is_quarantine(r))
    pa.Table.from_pylist([r for r in records if is_quarantine(r)], schema.QUARANTINE_SCHEMA)
    # through the fused ingest pass: read = kept + dropped + quarantined, one record a bundle
    steps = build_steps(PipelineConfig())
    src = SourceConfig(kind="arxiv", name="papers", uri=str(folder))
    read = quarantined = 0
    for unit in plan_inputs([src], "/unused"):
        kept, rejected, bad, counts = process_unit(unit, steps)
        total = _total(counts)
        total.check(unit.shard)
        read += total.read
        quarantined += total.quarantined
    assert read == 9 and quarantined == 8


def test_ingest_stage_reads_the_bundles(papers: Path, tmp_path: Path) -> None:
    from llm.config import build_config
    from llm.data.dataset import read_manifest
    from llm.data.ingest import run_ingest
    from llm.executor import LocalExecutor

    cfg = build_config({}, [f"data.sources=[{{kind: arxiv, name: papers, uri: '{papers}'}}]",
                            f"work_dir={tmp_path / 'work'}", "tracking.enabled=false"])
    out = tmp_path / "docs"
    run_ingest(cfg, str(tmp_path / "no-crawl"), str(out), LocalExecutor())
    manifest = read_manifest(str(out))
    counts = manifest["totals"]["counts"]
    assert counts["read"] == 6 and counts["quarantined"] == 0
    assert counts["kept"] + sum(counts["dropped"].values()) == 6
    kept = pa.concat_tables([pq.read_table(out / shard["files"]["data"]) for shard in manifest["shards"]])
    assert kept.num_rows == counts["kept"] > 0
    metas = [json.loads(m) for m in kept.column("meta").to_pylist()]
    assert {m["main_file"] for m in metas} <= set(MAIN_FILES.values())
    assert any("\\begin{equation}" in text for text in kept.column("text").to_pylist())
