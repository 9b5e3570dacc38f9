"""`llmpipe explain` and `llmpipe stats` on a dataset written by the real ingest pass, and the content
step's block lists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from llm import storage
from llm.config import ContentConfig, build_config
from llm.data.content import ContentStep
from llm.data.ingest import run_ingest
from llm.data.inspect import explain, find_in_shard, stats
from llm.executor import LocalExecutor

PROSE = ("The river rises in the hills to the north of the town and flows south to the sea. "
         "It was used for centuries to carry timber and grain, and the old mills still stand along its banks. "
         "In the spring the water is high and fast, and the town holds a boat race that draws visitors. "
         "The bridge that crosses it was built of stone and has been repaired many times since then. "
         "Today the path along the river is a favourite walk for the people who live in the valley. "
         "Write to river.office@example.com for a fishing permit.")


def _ingest(tmp_path):
    src = tmp_path / "in.jsonl"
    texts = [PROSE, "This is a short note about the river that runs past the old town and its mills.", "Der Fluss entspringt in den Hügeln nördlich der Stadt und fließt nach Süden. " * 8]
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts) + "{broken\n")
    cfg = build_config({}, [f"data.sources=[{{kind: jsonl, name: web, uri: '{src}'}}]"])
    out = str(tmp_path / "docs")
    return out, run_ingest(cfg, "", out, LocalExecutor())


def test_explain_and_stats_on_an_ingested_dataset(tmp_path, capsys):
    out, manifest = _ingest(tmp_path)
    shard = manifest["shards"][0]
    kept = pq.read_table(f"{out}/{shard['files']['data']}").to_pylist()
    rejected = pq.read_table(f"{out}/{shard['files']['rejected']}").to_pylist()
    assert len(kept) == 1 and "<EMAIL>" in kept[0]["text"] and kept[0]["pii_email"] == 1
    by_rule = {r["rule"]: r for r in rejected}
    assert {r["stage"] for r in rejected} == {"quality", "langid"} and "lang_not_kept" in by_rule
    # rejected rows keep the signals measured before the drop
    assert by_rule["lang_not_kept"]["lang"] == "de" and by_rule["lang_not_kept"]["gopher_words"] is None

    text = explain(out, kept[0]["id"])
    assert "quality    kept" in text and "gopher_words" in text and "min 50" in text
    short = next(r for r in rejected if r["stage"] == "quality")
    text = explain(out, short["id"])
    assert f"DROPPED by {short['rule']}" in text and "FAILS" in text and "content    not reached" in text

    data = stats(out)
    assert data["steps"]["langid"]["dropped"] == {"lang_not_kept": 1}
    assert data["languages"]["kept"] == {"en": 1} and data["languages"]["dropped"]["de"] == 1
    assert main(["stats", out]) == 0 and "lang_not_kept" in capsys.readouterr().out
    assert main(["explain", out, "no-such-id"]) == 2
    assert "river.office@example.com" not in (tmp_path / "docs").joinpath(shard["files"]["data"]).read_bytes().decode("latin-1")


def test_content_step_domains_and_words(tmp_path):
    (tmp_path / "domains.txt").write_text("# blocked\nbad.example\n")
    (tmp_path / "words.txt").write_text("badword\nworse phrase\n")
    cfg = ContentConfig(blocked_domains_file=str(tmp_path / "domains.txt"), word_list="file",
                        blocked_words_file=str(tmp_path / "words.txt"))
    docs = pa.table({"id": list("abcd"), "source": ["web"] * 4,
                     "url": ["https://www.bad.example/x", "http://notbad.example/", None, "https://ok.org/"],
                     "text": ["fine", "fine", "a BADWORD here", "badwords and a worse phrase, fine"]})
    out = ContentStep(cfg).apply(docs)
    assert out.kept.column("id").to_pylist() == ["b"]
    rules = dict(zip(out.dropped.column("id").to_pylist(), out.dropped.column("rule").to_pylist()))
    assert rules == {"a": "content_blocked_domain", "c": "content_blocked_words", "d": "content_blocked_words"}
    assert "badword" not in str(out.dropped.column("detail").to_pylist())


def test_lookup_reads_the_id_column_and_one_row_group(tmp_path):
    """A lookup must not read a shard whole: bytes read by this process (Linux `rchar`) stay well
    under the file size, for ids in no particular order (statistics cannot skip anything then)."""
    proc_io = Path("/proc/self/io")
    if not proc_io.exists():
        pytest.skip("counting bytes read needs /proc/self/io")
    rng = np.random.default_rng(0)
    ids = [f"{h:016x}" for h in rng.integers(0, 2**62, 4000)]
    texts = [rng.bytes(1500).hex() for _ in ids]  # ~3 KB each, hardly compressible
    uri = str(tmp_path / "shard.parquet")
    storage.write_parquet(uri, pa.table({"id": ids, "text": texts, "source": ["web"] * len(ids)}), row_group_rows=500)
    size = Path(uri).stat().st_size

    def rchar() -> int:
        return int(re.search(r"rchar: (\d+)", proc_io.read_text()).group(1))

    before = rchar()
    row = find_in_shard(uri, ids[2750])
    used = rchar() - before
    assert row is not None and row["text"] == texts[2750] and row["id"] == ids[2750]
    assert used < size / 4, (used, size)  # 8 row groups: the id column plus one group's text
    assert find_in_shard(uri, "no-such-id") is None
