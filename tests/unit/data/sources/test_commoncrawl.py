"""`commoncrawl` sources from a local folder laid out like Common Crawl's bucket (real records)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from llm.config import SourceConfig, build_config
from llm.data.readers import is_quarantine, plan_inputs, read_unit
from llm.errors import InputNotFound, UserError
from llm.storage import RangedFile
from tests.unit.data.sources import commoncrawl_files as cc


@pytest.fixture(scope="module")
def crawl(shared_data: Path, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("commoncrawl")
    return root, cc.build(shared_data, root)


def _source(root: Path, **options) -> SourceConfig:
    return SourceConfig(kind="commoncrawl", name="cc", commoncrawl={"prefix": str(root), **options})


def _read(source: SourceConfig) -> tuple[list[dict], list[dict]]:
    records = [r for unit in plan_inputs([source], "/nonexistent") for r in read_unit(unit)]
    return [r for r in records if not is_quarantine(r)], [r for r in records if is_quarantine(r)]


def test_a_dump_name_resolves_to_its_listed_files_in_listing_order(crawl) -> None:
    root, _ = crawl
    warc = plan_inputs([_source(root, dump=cc.DUMP)], "/nonexistent")
    assert [u.files for u in warc] == [(str(root / cc.WARC),), (str(root / cc.DAMAGED),)]
    wet = plan_inputs([_source(root, dump=cc.DUMP, kind="wet")], "/nonexistent")
    assert [u.files for u in wet] == [(str(root / cc.WET),)]
    first = plan_inputs([SourceConfig(kind="commoncrawl", name="cc", max_files=1,
                                      commoncrawl={"prefix": str(root), "dump": cc.DUMP})], "/nonexistent")
    assert [u.shard for u in first] == [warc[0].shard]  # a unit is named by its file alone


def test_an_explicit_plain_paths_listing_names_the_files(crawl, tmp_path: Path) -> None:
    root, _ = crawl
    listing = tmp_path / "warc.paths"
    listing.write_text(f"{cc.DAMAGED}\n\n")
    units = plan_inputs([_source(root, paths=str(listing))], "/nonexistent")
    assert [u.files for u in units] == [(str(root / cc.DAMAGED),)]


def test_warc_responses_are_html_documents_at_their_member_offsets(crawl) -> None:
    root, info = crawl
    docs, quarantined = _read(_source(root, paths=str(root / f"crawl-data/{cc.DUMP}/warc.paths.gz")))
    intact = [d for d in docs if json.loads(d["meta"])["path"] == cc.WARC]
    assert [json.loads(d["meta"])["offset"] for d in intact] == [off for _, off, _ in info["members"]]
    assert [d["url"] for d in intact] == info["urls"]
    assert {d["content_type"] for d in intact} == {"html"}
    assert b"Example Domain" in intact[0]["payload"]


def test_a_corrupt_member_is_quarantined_counted_and_reading_resumes(crawl) -> None:
    root, info = crawl
    docs, quarantined = _read(_source(root, dump=cc.DUMP))
    damaged = [d for d in docs if json.loads(d["meta"])["path"] == cc.DAMAGED]
    assert [d["url"] for d in damaged] == [info["urls"][0], info["urls"][2]]
    (entry,) = quarantined
    assert entry["location"].endswith(f"{cc.DAMAGED}#offset={info['corrupt_at']}")
    assert "corrupt gzip member" in entry["error"]
    assert entry["records"] == 1 and entry["records_known"]
    assert len(docs) + sum(q["records"] for q in quarantined) == 6  # 3 records in each file


def test_wet_conversion_records_are_text_documents_with_their_warc_record(crawl) -> None:
    root, info = crawl
    docs, quarantined = _read(_source(root, dump=cc.DUMP, kind="wet"))
    assert not quarantined
    assert [d["payload"].decode() for d in docs] == [w["text"] for w in info["wet"]]
    assert {d["content_type"] for d in docs} == {"text"}
    warc_docs, _ = _read(_source(root, paths=str(root / f"crawl-data/{cc.DUMP}/warc.paths.gz")))
    ids = [json.loads(d["meta"])["warc_record_id"] for d in warc_docs[:3]]
    assert [json.loads(d["meta"])["refers_to"] for d in docs] == ids
    assert [d["created"] for d in docs] == [d["created"] for d in warc_docs[:3]]


def test_cdx_records_read_exactly_their_byte_ranges(crawl) -> None:
    root, info = crawl
    docs, quarantined = _read(_source(root, cdx=str(root / "cdx.jsonl")))
    assert not quarantined
    assert [d["url"] for d in docs] == [r["url"] for r in info["cdx"]]
    # the same record read from its file or by its CDX range is the same document
    whole, _ = _read(_source(root, paths=str(root / f"crawl-data/{cc.DUMP}/warc.paths.gz")))
    assert [d["id"] for d in docs] == [d["id"] for d in whole[:3]]


def test_a_cdx_line_without_a_range_or_pointing_nowhere_is_quarantined(crawl, tmp_path: Path) -> None:
    root, info = crawl
    cdx = tmp_path / "cdx.jsonl"
    good = info["cdx"][0]
    cdx.write_text("\n".join(json.dumps(r) for r in [
        {"url": "x", "filename": cc.WARC}, dict(good, filename="crawl-data/missing.warc.gz"), good]) + "\n")
    docs, quarantined = _read(_source(root, cdx=str(cdx)))
    assert [d["url"] for d in docs] == [good["url"]]
    assert "not a CDX record" in quarantined[0]["error"] and "'offset'" in quarantined[0]["error"]
    assert "unreadable CDX record" in quarantined[1]["error"] and "missing.warc.gz" in quarantined[1]["location"]


def test_a_missing_dump_or_a_bad_dump_name_is_a_clear_error(crawl) -> None:
    root, _ = crawl
    with pytest.raises(InputNotFound, match=r"dump 'CC-MAIN-2019-01' not found: no .*CC-MAIN-2019-01/warc\.paths\.gz"):
        plan_inputs([_source(root, dump="CC-MAIN-2019-01")], "/nonexistent")
    with pytest.raises(UserError, match=r"`commoncrawl.dump` '2025-33' is not a dump name"):
        plan_inputs([_source(root, dump="2025-33")], "/nonexistent")
    with pytest.raises(UserError, match=r"set `commoncrawl.dump`"):
        plan_inputs([_source(root)], "/nonexistent")


def test_ranged_file_streams_in_chunks_and_keeps_whole_file_offsets(crawl) -> None:
    root, info = crawl
    path = str(root / cc.WARC)
    data = (root / cc.WARC).read_bytes()
    fh = RangedFile(path, 1219, 1219 + 7063, chunk=1000)
    pieces = [fh.read(100) for _ in range(71)]  # small reads, as a parser makes them
    assert b"".join(pieces) == data[1219:1219 + 7063] and fh.fetches == 8  # one fetch per 1000 bytes
    assert fh.read(10) == b""  # nothing past the range
    fh.seek(1300)
    assert fh.read(5) == data[1300:1305] and fh.fetches == 9
    assert gzip.decompress(data[1219:1219 + 7063]).startswith(b"WARC/1.")


def test_ingest_stage_runs_a_wet_source_end_to_end(crawl, tmp_path: Path) -> None:
    from llm.data.dataset import read_manifest
    from llm.data.ingest import run_ingest
    from llm.executor import LocalExecutor

    root, info = crawl
    cfg = build_config({}, [f"data.sources=[{{kind: commoncrawl, name: cc, commoncrawl: {{prefix: '{root}', "
                            f"dump: {cc.DUMP}, kind: wet}}}}]", f"work_dir={tmp_path / 'work'}",
                            "tracking.enabled=false", "data.quality.enabled=false", "data.langid.enabled=false"])
    out = str(tmp_path / "docs")
    run_ingest(cfg, str(tmp_path / "no-crawl"), out, LocalExecutor())
    counts = read_manifest(out)["totals"]["counts"]
    assert counts["read"] == len(info["wet"])
    assert counts["read"] == counts["kept"] + sum(counts["dropped"].values()) + counts["quarantined"]
    assert counts["kept"] >= 1


def test_a_file_of_many_members_is_fetched_once_in_chunks(crawl, tmp_path: Path, monkeypatch) -> None:
    from llm import storage

    root, info = crawl
    warc = (root / cc.WARC).read_bytes()
    big = tmp_path / cc.WARC
    big.parent.mkdir(parents=True)
    big.write_bytes(warc * 100)  # 300 records, 0.9 MB
    (tmp_path / "warc.paths").write_text(cc.WARC + "\n")
    fetched: list[int] = []
    read_range = storage.read_range
    monkeypatch.setattr(storage, "read_range", lambda uri, start, n: fetched.append(n) or read_range(uri, start, n))
    source = SourceConfig(kind="commoncrawl", name="cc", commoncrawl={
        "prefix": str(tmp_path), "paths": str(tmp_path / "warc.paths"), "chunk_bytes": 1 << 16})
    docs, quarantined = _read(source)
    assert len(docs) == 300 and not quarantined
    chunks = -(-len(warc) * 100 // (1 << 16))
    assert sum(fetched) == len(warc) * 100 and len(fetched) <= chunks + 1  # every byte once, 64 KiB at a time
