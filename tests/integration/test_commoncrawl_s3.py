"""`commoncrawl` sources on an S3-compatible server on loopback, in a bucket laid out like Common Crawl's:
every read of a crawl file is a ranged GET, and a CDX record reads exactly its own bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm import storage
from llm.config import SourceConfig
from llm.data.readers import is_quarantine, plan_inputs, read_unit
from llm.errors import InputNotFound
from tests.unit.data.sources import commoncrawl_files as cc

pytestmark = pytest.mark.integration
PREFIX = "s3://llmpipe-test/commoncrawl/"


@pytest.fixture()
def bucket(s3_endpoint, shared_data: Path, tmp_path: Path):
    """The layout uploaded under PREFIX; yields (build info, the GetObject calls made, as (key, Range))."""
    info = cc.build(shared_data, tmp_path / "crawl")
    storage.upload_dir(str(tmp_path / "crawl"), PREFIX)
    gets: list[tuple[str, str | None]] = []

    def record(params, **_):
        gets.append((params["Key"], params.get("Range")))

    events = storage._s3_client().meta.events
    events.register("provide-client-params.s3.GetObject", record)
    try:
        yield info, gets
    finally:
        events.unregister("provide-client-params.s3.GetObject", record)


def _read(**options) -> tuple[list[dict], list[dict]]:
    source = SourceConfig(kind="commoncrawl", name="cc", commoncrawl={"prefix": PREFIX, **options})
    records = [r for unit in plan_inputs([source], "/nonexistent") for r in read_unit(unit)]
    return [r for r in records if not is_quarantine(r)], [r for r in records if is_quarantine(r)]


def _crawl_file_gets(gets) -> list[tuple[str, str | None]]:
    return [(key, rng) for key, rng in gets if "/segments/" in key]


def test_a_dump_is_read_from_s3_by_ranged_gets_with_the_corrupt_member_quarantined(bucket) -> None:
    info, gets = bucket
    docs, quarantined = _read(dump=cc.DUMP, chunk_bytes=1 << 16)
    assert [d["url"] for d in docs] == info["urls"] + [info["urls"][0], info["urls"][2]]
    (entry,) = quarantined
    assert entry["location"] == f"{PREFIX}{cc.DAMAGED}#offset={info['corrupt_at']}"
    assert "corrupt gzip member" in entry["error"] and entry["records"] == 1
    file_gets = _crawl_file_gets(gets)
    assert {key for key, _ in file_gets} == {f"commoncrawl/{cc.WARC}", f"commoncrawl/{cc.DAMAGED}"}
    assert all(rng and rng.startswith("bytes=") for _, rng in file_gets)  # never a whole-object GET
    for _, rng in file_gets:
        lo, hi = map(int, rng[len("bytes="):].split("-"))
        assert hi - lo + 1 <= 1 << 16


def test_cdx_records_each_read_exactly_their_range(bucket) -> None:
    info, gets = bucket
    storage.write_bytes(f"{PREFIX}index/cdx.jsonl", "".join(json.dumps(r) + "\n" for r in info["cdx"]).encode())
    docs, quarantined = _read(cdx=f"{PREFIX}index/cdx.jsonl")
    assert not quarantined
    assert [d["url"] for d in docs] == [r["url"] for r in info["cdx"]]
    assert [json.loads(d["meta"])["offset"] for d in docs] == [int(r["offset"]) for r in info["cdx"]]
    wanted = [(f"commoncrawl/{cc.WARC}", f"bytes={r['offset']}-{int(r['offset']) + int(r['length']) - 1}")
              for r in info["cdx"]]
    assert _crawl_file_gets(gets) == wanted


def test_wet_records_on_s3_are_text_and_a_missing_dump_names_itself(bucket) -> None:
    info, gets = bucket
    docs, quarantined = _read(dump=cc.DUMP, kind="wet")
    assert not quarantined
    assert [(d["url"], d["payload"].decode(), json.loads(d["meta"])["refers_to"]) for d in docs] == \
        [(w["url"], w["text"], w["refers_to"]) for w in info["wet"]]
    assert all(rng for _, rng in _crawl_file_gets(gets))
    with pytest.raises(InputNotFound, match=r"dump 'CC-MAIN-2024-10' not found: no s3://llmpipe-test/commoncrawl/"
                       r"crawl-data/CC-MAIN-2024-10/wet\.paths\.gz"):
        _read(dump="CC-MAIN-2024-10", kind="wet")
