"""Input planning and the WARC / code / JSONL / Parquet readers, on real archives and bad input."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm.config import SourceConfig
from llm.data import schema
from llm.data.readers import coding_cookie, is_quarantine, plan_inputs, read_unit

WARC_DIR = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "warc"


@pytest.fixture(scope="module")
def warc_dir() -> Path:
    if not WARC_DIR.is_dir():
        pytest.skip(f"development WARC files not present at {WARC_DIR.resolve()}")
    return WARC_DIR.resolve()


def _read(source: SourceConfig, crawl_uri: str = "/nonexistent") -> list[dict]:
    return [rec for unit in plan_inputs([source], crawl_uri) for rec in read_unit(unit)]


def _check_shape(records: list[dict]) -> None:
    """Every record has exactly the field names of its schema and fits it."""
    docs = [r for r in records if not is_quarantine(r)]
    bad = [r for r in records if is_quarantine(r)]
    for r in docs:
        assert set(r) == set(schema.RAW_SCHEMA.names)
    for r in bad:
        # `digest` and `text` come later, when the entry is sealed (llm.data.quarantine)
        assert set(r) == set(schema.QUARANTINE_SCHEMA.names) - {"digest", "text"}
        assert r["stage"] == "ingest" and r["error"]
        assert len(r["raw"]) <= schema.QUARANTINE_RAW_LIMIT
        assert r["records"] >= 1 and isinstance(r["records_known"], bool) and r["size"] >= 0
    pa.Table.from_pylist(docs, schema.RAW_SCHEMA)
    pa.Table.from_pylist(bad, schema.QUARANTINE_SCHEMA)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "ids must be unique"


# ------------------------------------------------------------------------------------------- planning


def test_plan_inputs_is_sorted_unique_and_root_relative(tmp_path: Path) -> None:
    for name in ["b.warc.gz", "a.warc", "c.arc", "d.arc.gz", "notes.txt", "sub/e.warc.gz"]:
        (tmp_path / "w" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "w" / name).write_bytes(b"x")
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "x.jsonl").write_text('{"text": "hi"}\n')
    units = plan_inputs(
        [SourceConfig(kind="warc", name="web", uri=str(tmp_path / "w")),
         SourceConfig(kind="jsonl", name="books", uri=str(tmp_path / "j"))],
        "/unused",
    )
    assert [u.shard.split("-")[0] for u in units] == ["web"] * 5 + ["books"]
    assert len({u.shard for u in units}) == 6 and all(len(u.shard.split("-")[1]) == 12 for u in units)
    assert [Path(u.files[0]).name for u in units[:5]] == ["a.warc", "b.warc.gz", "c.arc", "d.arc.gz", "e.warc.gz"]
    # shards are named by what they hold: a new file adds a shard and renames none; a changed file
    # renames only its own shard
    (tmp_path / "w" / "bb.warc").write_bytes(b"y")
    (tmp_path / "w" / "c.arc").write_bytes(b"changed")
    again = plan_inputs([SourceConfig(kind="warc", name="web", uri=str(tmp_path / "w"))], "/unused")
    before = {Path(u.files[0]).name: u.shard for u in units[:5]}
    after = {Path(u.files[0]).name: u.shard for u in again}
    assert set(after) == set(before) | {"bb.warc"}
    assert [n for n in before if before[n] != after[n]] == ["c.arc"]
    assert units[4].relative(units[4].files[0]) == "sub/e.warc.gz"
    # the same input elsewhere gives the same ids: they hang on the root-relative path
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "j", moved)
    a = _read(SourceConfig(kind="jsonl", name="books", uri=str(tmp_path / "j")))
    b = _read(SourceConfig(kind="jsonl", name="books", uri=str(moved)))
    assert a[0]["id"] == b[0]["id"]


def test_code_units_group_files_and_honour_glob_and_max_files(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / "pkg" / f"m{i}.py").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / f"m{i}.py").write_text(f"x = {i}\n")
    (tmp_path / "pkg" / "README.md").write_text("no")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "h.py").write_text("hidden = 1\n")
    src = SourceConfig(kind="code", name="code", uri=str(tmp_path), files_per_shard=2, max_files=4)
    units = plan_inputs([src], "/unused")
    assert [Path(f).name for u in units for f in u.files] == ["m0.py", "m1.py", "m2.py", "m3.py"]
    assert all(1 <= len(u.files) <= 8 for u in units)
    only = plan_inputs([SourceConfig(kind="code", name="code", uri=str(tmp_path), glob="pkg/m4*.py")], "/unused")
    assert [Path(f).name for u in only for f in u.files] == ["m4.py"]


def test_code_groups_are_cut_by_content_so_a_new_file_changes_one_group(tmp_path: Path) -> None:
    for i in range(300):
        (tmp_path / f"m{i:03d}.py").write_text(f"x = {i}\n")
    src = SourceConfig(kind="code", name="code", uri=str(tmp_path), files_per_shard=10)
    before = plan_inputs([src], "/unused")
    assert 10 < len(before) < 90  # about one cut every 10 files
    (tmp_path / "m150b.py").write_text("added = 1\n")
    after = plan_inputs([src], "/unused")
    changed = {u.shard for u in after} ^ {u.shard for u in before}
    assert len(changed) == 2  # the group the file fell in, before and after; every other group is the same
    grown = next(u for u in after if any(f.endswith("m150b.py") for f in u.files))
    assert grown.shard in changed


def test_default_code_source_is_the_stdlib_without_tests() -> None:
    units = plan_inputs([SourceConfig(kind="code", name="code", max_files=3000)], "/unused")
    rels = [u.relative(f) for u in units for f in u.files]
    assert "os.py" in rels and "json/decoder.py" in rels
    assert not any(part in ("test", "tests", "site-packages", "idlelib") for r in rels for part in r.split("/")[:-1])
    assert rels == sorted(rels)


def test_missing_or_empty_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="'books'.*does-not-exist"):
        plan_inputs([SourceConfig(kind="jsonl", name="books", uri=str(tmp_path / "does-not-exist"))], "/x")
    with pytest.raises(ValueError, match="'books'.*no files matching"):
        plan_inputs([SourceConfig(kind="jsonl", name="books", uri=str(tmp_path))], "/x")
    with pytest.raises(ValueError, match="unique"):
        plan_inputs([SourceConfig(kind="jsonl", name="a", uri=str(tmp_path)),
                     SourceConfig(kind="warc", name="a", uri=str(tmp_path))], "/x")


# ----------------------------------------------------------------------------------------------- WARC


def test_warc_reader_on_every_dev_archive(warc_dir: Path) -> None:
    records = _read(SourceConfig(kind="warc", name="web", uri=str(warc_dir)))
    _check_shape(records)
    docs = [r for r in records if not is_quarantine(r)]
    html = [r for r in docs if r["content_type"] == "html"]
    # iana.warc.gz alone holds 48 responses, 20 of them HTML pages
    iana = [r for r in docs if json.loads(r["meta"])["path"] == "iana.warc.gz"]
    assert len(iana) == 48
    assert sum(r["content_type"] == "html" for r in iana) == 20
    page = next(r for r in iana if r["url"] == "http://www.iana.org/domains")
    meta = json.loads(page["meta"])
    assert meta["status"] == 200 and meta["warc_record_id"].startswith("<urn:uuid:")
    assert page["charset"] == "utf-8" and page["created"].startswith("20")
    assert b"<html" in page["payload"].lower()
    # non-HTML responses are documents too (extraction drops them with a reason), without their bytes
    css = next(r for r in iana if r["content_type"] == "other:text/css")
    assert css["payload"] == b"" and json.loads(css["meta"])["length"] > 0
    # request / revisit / metadata / resource records are not documents
    assert not [r for r in docs if "revisit" in r["url"]]
    assert all(r["url"].startswith("http") for r in docs)
    # ARC files are read too (converted on the fly)
    assert any(json.loads(r["meta"])["path"] == "example.arc.gz" for r in html)
    # bad.arc: three records with broken lengths, each quarantined with its offset
    bad_arc = [r for r in records if is_quarantine(r) and "bad.arc#" in r["location"]]
    assert len(bad_arc) == 3 and all("HTTP status line" in r["error"] for r in bad_arc)
    # missing-status-text.warc: a 302 with an empty reason phrase is still a readable response
    redirect = [r for r in docs if json.loads(r["meta"])["path"] == "missing-status-text.warc"]
    assert len(redirect) == 1 and json.loads(redirect[0]["meta"])["status"] == 302


def test_warc_ids_are_stable_across_reruns(warc_dir: Path) -> None:
    src = SourceConfig(kind="warc", name="web", uri=str(warc_dir / "example.arc"))
    a, b = _read(src), _read(src)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert [r["meta"] for r in a] == [r["meta"] for r in b]  # no random ARC record ids in meta


def test_non_chunked_gzip_warc_is_read_whole(warc_dir: Path) -> None:
    # gzipped as one member instead of one per record: every record is still read, each located by the
    # member's offset and its own offset inside the member
    records = _read(SourceConfig(kind="warc", name="web", uri=str(warc_dir / "example-bad.warc.gz.bad")))
    _check_shape(records)
    assert not any(is_quarantine(r) for r in records)
    assert [r["url"] for r in records] == ["http://example.com?example=1", "http://www.iana.org/domains/example"]
    assert [json.loads(r["meta"])["offset"] for r in records] == ["0+460", "0+4771"]


def test_truncated_warc_keeps_what_precedes_the_cut(warc_dir: Path, tmp_path: Path) -> None:
    whole = (warc_dir / "iana.warc.gz").read_bytes()
    (tmp_path / "iana.warc.gz").write_bytes(whole[:400_000])  # cuts a font record in the middle
    records = _read(SourceConfig(kind="warc", name="web", uri=str(tmp_path)))
    _check_shape(records)
    bad = [r for r in records if is_quarantine(r)]
    docs = [r for r in records if not is_quarantine(r)]
    assert len(bad) == 1 and "truncated" in bad[0]["error"]
    assert bad[0]["location"].endswith("#offset=329393")
    assert len(docs) == 12 and sum(r["content_type"] == "html" for r in docs) == 2
    full = _read(SourceConfig(kind="warc", name="web", uri=str(warc_dir / "iana.warc.gz")))
    assert {r["id"] for r in docs} < {r["id"] for r in full}  # same name and offsets: same ids


def test_damaged_record_in_the_middle_does_not_lose_the_rest(warc_dir: Path, tmp_path: Path) -> None:
    whole = bytearray((warc_dir / "iana.warc.gz").read_bytes())
    whole[4100:4200] = b"\x00" * 100  # inside the gzip member of the record at offset 4009
    (tmp_path / "hole.warc.gz").write_bytes(bytes(whole))
    records = _read(SourceConfig(kind="warc", name="web", uri=str(tmp_path)))
    _check_shape(records)
    bad = [r for r in records if is_quarantine(r)]
    docs = [r for r in records if not is_quarantine(r)]
    assert len(bad) == 1 and bad[0]["location"].endswith("#offset=4009")
    assert len(docs) == 47  # reading resumed at the next gzip member: every other response is read
    assert any(r["url"] == "https://www.iana.org/dnssec" for r in docs)  # the file's last page


def test_plain_warc_cut_in_a_header_is_quarantined(warc_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "cut.warc").write_bytes((warc_dir / "example.warc").read_bytes()[:5000])
    records = _read(SourceConfig(kind="warc", name="web", uri=str(tmp_path)))
    _check_shape(records)
    assert sum(is_quarantine(r) for r in records) == 1
    assert sum(not is_quarantine(r) for r in records) == 1


def test_empty_and_garbage_files_are_quarantined(tmp_path: Path) -> None:
    (tmp_path / "empty.warc.gz").write_bytes(b"")
    (tmp_path / "noise.warc").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "text.warc").write_bytes(b"this is not an archive\n" * 10)
    records = _read(SourceConfig(kind="warc", name="web", uri=str(tmp_path)))
    _check_shape(records)
    assert records and all(is_quarantine(r) for r in records)
    assert records[0]["error"] == "empty file"
    assert any("noise.warc#offset=0" in r["location"] and "unreadable record" in r["error"] for r in records)


# ----------------------------------------------------------------------------------------------- code


def test_code_reader(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_bytes(b"# -*- coding: latin-1 -*-\nname = '\xe9'\n")
    (tmp_path / "b.py").write_bytes(b"x = 1\n")
    (tmp_path / "__init__.py").write_bytes(b"")
    records = _read(SourceConfig(kind="code", name="code", uri=str(tmp_path)))
    _check_shape(records)
    by_path = {json.loads(r["meta"])["path"]: r for r in records}
    assert set(by_path) == {"a.py", "b.py", "__init__.py"}
    assert by_path["a.py"]["charset"] == "latin-1" and by_path["b.py"]["charset"] is None
    assert by_path["b.py"]["payload"] == b"x = 1\n" and by_path["b.py"]["content_type"] == "text"
    assert by_path["b.py"]["created"] is None and by_path["b.py"]["url"].startswith("file:///")
    assert json.loads(by_path["a.py"]["meta"])["language"] == "python"


def test_coding_cookie() -> None:
    assert coding_cookie(b"#!/usr/bin/env python\n# vim: set fileencoding=cp1252 :\n") == "cp1252"
    assert coding_cookie(b"import os\n# coding: latin-1\n") is None  # line 2 counts only after a comment
    assert coding_cookie(b"\xef\xbb\xbfx = 1\n") == "utf-8"
    assert coding_cookie(b"x = 1\n") is None


# ---------------------------------------------------------------------------------------------- JSONL


def test_jsonl_reader_quarantines_bad_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"text": "first", "doc": "A1"}),
        "",
        "{not json",
        json.dumps({"body": "no text field"}),
        json.dumps({"text": 42}),
        json.dumps(["a", "list"]),
        json.dumps({"text": "last", "doc": "A7", "url": "http://x/"}),
    ]
    (tmp_path / "part.jsonl").write_text("\n".join(lines) + "\n")
    with gzip.open(tmp_path / "more.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"text": "zipped"}) + "\n")
    (tmp_path / "zero.jsonl").write_bytes(b"")
    records = _read(SourceConfig(kind="jsonl", name="books", uri=str(tmp_path), id_field="doc"))
    _check_shape(records)
    docs = [r for r in records if not is_quarantine(r)]
    bad = [r for r in records if is_quarantine(r)]
    assert [r["payload"] for r in docs] == [b"zipped", b"first", b"last"]
    assert json.loads(docs[1]["meta"]) == {"path": "part.jsonl", "line": 1, "doc": "A1"}
    assert docs[2]["url"] == "http://x/"
    assert sorted(r["location"].rsplit("#", 1)[1] for r in bad if "part.jsonl" in r["location"]) == [
        "line=3", "line=4", "line=5", "line=6"]
    assert any(r["error"] == "empty file" and "zero.jsonl" in r["location"] for r in bad)
    assert any("malformed JSON" in r["error"] and r["raw"] == b"{not json\n" for r in bad)


def test_truncated_gzip_jsonl_keeps_earlier_lines(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(json.dumps({"text": f"doc {i} " * 20}).encode() + b"\n" for i in range(200)))
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    records = _read(SourceConfig(kind="jsonl", name="books", uri=str(tmp_path)))
    _check_shape(records)
    assert is_quarantine(records[-1]) and "unreadable" in records[-1]["error"]
    assert all(not is_quarantine(r) for r in records[:-1]) and len(records) > 1


# -------------------------------------------------------------------------------------------- Parquet


def test_parquet_reader(tmp_path: Path) -> None:
    pq.write_table(pa.table({"content": ["one", None, "three"], "key": ["k1", "k2", "k3"]}), tmp_path / "a.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    pq.write_table(pa.table({"other": [1]}), tmp_path / "c.parquet")
    records = _read(SourceConfig(kind="parquet", name="pq", uri=str(tmp_path), text_field="content", id_field="key"))
    _check_shape(records)
    docs = [r for r in records if not is_quarantine(r)]
    bad = [r for r in records if is_quarantine(r)]
    assert [r["payload"] for r in docs] == [b"one", b"three"]
    assert json.loads(docs[1]["meta"]) == {"path": "a.parquet", "row": 2, "key": "k3"}
    errors = sorted(r["error"].split(":")[0] for r in bad)
    assert len(bad) == 3
    assert any("broken.parquet" in r["location"] and "unreadable Parquet" in r["error"] for r in bad)
    assert any("c.parquet" in r["location"] and "no column 'content'" in r["error"] for r in bad)
    assert any("a.parquet#row=1" in r["location"] for r in bad), errors
