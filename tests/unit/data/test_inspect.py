"""`llmpipe explain` and `llmpipe stats` on a dataset written by the real ingest pass, and the content
step's block lists."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from flows.cli import main
from llm.config import ContentConfig, build_config
from llm.data.content import ContentStep
from llm.data.ingest import run_ingest
from llm.data.inspect import explain, stats
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
