"""Stage identity and incremental refresh over real HTML pages in WARC files, in-process: which stages
and shards a change reruns, what a refresh adds and never removes, and that a refresh ends where a
fresh run over the same files does."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from llm import storage, versions
from llm.config import build_config
from llm.data.dataset import read_manifest
from llm.data.exact_dedup import run_exact_dedup
from llm.data.ingest import run_ingest
from llm.data.minhash.stage import run_minhash_dedup
from llm.data.reshard import run_reshard
from llm.tokenizer.tokenize import run_tokenize
from llm.executor import LocalExecutor
from llm.layout import Layout
from llm.tokenizer.stage import run_tokenizer_training
from tests.trees import output_tree

STAGES = ["ingest", "exact_dedup", "minhash_dedup", "shard", "tokenizer", "tokenize"]


def _pages(shared_data: Path) -> list[dict]:
    with open(shared_data / "html_dev.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def write_warc(path: Path, pages: list[tuple[str, str]], date: str) -> None:
    """A WARC file of HTML responses (url, html), all fetched at `date`."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    for url, html in pages:
        body = html.encode("utf-8")
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), length=len(body),
                                                      http_headers=headers, warc_headers_dict={"WARC-Date": date}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def _add_sentence(html: str) -> str:
    """The page with one sentence added to a paragraph in the middle of its body (the main text)."""
    ends = [i for i in range(len(html)) if html.startswith("</p>", i)]
    cut = ends[len(ends) // 2]
    return html[:cut] + " This sentence was added to the copy." + html[cut:]


def _url(page: dict) -> str:
    return "https://docs.example.org/" + page["id"].split(":", 1)[1]


def _config(work: Path, warcs: Path, *overrides: str):
    return build_config({}, [
        f"work_dir={work}",
        f"data.sources=[{{kind: warc, name: web, uri: '{warcs}'}}]",
        # most documentation pages fail the prose rules (code blocks): off, so refreshes add documents
        "data.quality.c4.enabled=false", "data.quality.gopher.enabled=false",
        "data.quality.gopher_repetition.enabled=false",
        "data.minhash.min_buckets=2", "data.shard.target_bytes=60000",
        "tokenizer.vocab_size=400", "tokenizer.sample_bytes=200000", *overrides,
    ])


def run_data(cfg) -> dict[str, dict]:
    """The data stages after the crawl, as the flow chains them, on this process."""
    layout, ex, d = Layout.for_work_dir(cfg.work_dir), LocalExecutor(), cfg.data
    return {
        "ingest": run_ingest(cfg, layout.crawl, layout.docs, ex),
        "exact_dedup": run_exact_dedup(layout.docs, layout.dedup, d.exact_dedup, d.shard, ex),
        "minhash_dedup": run_minhash_dedup(layout.dedup, layout.near_dedup, d.minhash, d.shard, ex),
        "shard": run_reshard(layout.near_dedup, layout.shards, d.shard, ex),
        "tokenizer": run_tokenizer_training(layout.shards, layout.tokenizer, cfg.tokenizer, ex),
        "tokenize": run_tokenize(layout.shards, layout.tokenizer, layout.tokens, cfg.tokenize, ex),
    }


def _reran(before: dict, after: dict) -> list[str]:
    return [s for s in STAGES if after[s]["version"] != before[s]["version"]]


def _run_info(cfg, stage: str, manifest: dict) -> dict:
    root = {"ingest": "docs", "exact_dedup": "dedup", "minhash_dedup": "near_dedup", "shard": "shards"}[stage]
    return versions.run_info(getattr(Layout.for_work_dir(cfg.work_dir), root), manifest["version"])


def _kept_ids(manifest_uri: str) -> set[str]:
    root = versions.split(manifest_uri)[0]
    ids: set[str] = set()
    for s in read_manifest(manifest_uri)["shards"]:
        ids |= set(storage.read_parquet(storage.join(root, s["files"]["data"]), columns=["id"]).column("id").to_pylist())
    return ids


def _rejected(cfg, manifest: dict) -> list[dict]:
    root = Layout.for_work_dir(cfg.work_dir).near_dedup
    rows = []
    for s in manifest["shards"]:
        if "rejected" in s["files"]:
            rows += storage.read_parquet(storage.join(root, s["files"]["rejected"]),
                                         columns=["id", "rule", "detail", "url"]).to_pylist()
    return rows


@pytest.fixture()
def corpus(tmp_path, shared_data):
    """Six WARC files of five real pages each, fetched in 2020."""
    pages = _pages(shared_data)
    warcs = tmp_path / "warc"
    for i in range(6):
        write_warc(warcs / f"2020-{i:02d}.warc.gz", [(_url(p), p["html"]) for p in pages[i * 5:(i + 1) * 5]],
                   f"2020-01-{i + 1:02d}T00:00:00Z")
    return pages, warcs


def test_unchanged_input_skips_every_stage_and_rewrites_nothing(tmp_path, corpus):
    _, warcs = corpus
    cfg = _config(tmp_path / "work", warcs)
    first = run_data(cfg)
    tree = output_tree(tmp_path / "work")
    timing = sorted(p.read_bytes() for p in (tmp_path / "work").rglob("*.run.json"))
    again = run_data(cfg)
    assert _reran(first, again) == [] and all(again[s].get("reused") for s in STAGES)
    assert output_tree(tmp_path / "work") == tree
    assert sorted(p.read_bytes() for p in (tmp_path / "work").rglob("*.run.json")) == timing


def test_one_config_field_reruns_exactly_the_stages_below_it(tmp_path, corpus):
    _, warcs = corpus
    first = run_data(_config(tmp_path / "work", warcs))
    changed = run_data(_config(tmp_path / "work", warcs, "data.shard.target_bytes=50000"))
    assert _reran(first, changed) == ["shard", "tokenizer", "tokenize"]
    tok = run_data(_config(tmp_path / "work", warcs, "data.shard.target_bytes=50000", "tokenize.val_fraction=0.1"))
    assert _reran(changed, tok) == ["tokenize"]
    dedup = run_data(_config(tmp_path / "work", warcs, "data.shard.target_bytes=50000", "tokenize.val_fraction=0.1",
                             "data.minhash.threshold=0.7"))
    assert _reran(tok, dedup) == ["minhash_dedup", "shard", "tokenizer", "tokenize"]
    # and back: the earlier version is current again without being made again
    back = run_data(_config(tmp_path / "work", warcs, "data.shard.target_bytes=50000", "tokenize.val_fraction=0.1"))
    assert {s: back[s]["version"] for s in STAGES} == {s: tok[s]["version"] for s in STAGES}
    assert all(back[s].get("reused") for s in STAGES)


def test_a_quality_threshold_reruns_ingest_and_everything_after(tmp_path, corpus):
    _, warcs = corpus
    first = run_data(_config(tmp_path / "work", warcs))
    second = run_data(_config(tmp_path / "work", warcs, "data.quality.fineweb.max_short_line_ratio=0.8"))
    assert _reran(first, second) == STAGES


def test_a_change_to_one_stage_code_reruns_it_and_the_stages_below(tmp_path, corpus, monkeypatch):
    from llm import lineage

    _, warcs = corpus
    cfg = _config(tmp_path / "work", warcs)
    first = run_data(cfg)
    real = lineage.code_digest
    monkeypatch.setattr(lineage, "code_digest", lambda stage: real(stage) + ("x" if stage == "minhash_dedup" else ""))
    second = run_data(cfg)
    assert _reran(first, second) == ["minhash_dedup", "shard", "tokenizer", "tokenize"]
    assert second["minhash_dedup"]["identity"]["code"].endswith("x")


def test_new_files_are_read_alone_and_deduplicated_against_the_corpus(tmp_path, corpus):
    pages, warcs = corpus
    cfg = _config(tmp_path / "work", warcs)
    first = run_data(cfg)
    layout = Layout.for_work_dir(cfg.work_dir)
    old_kept = _kept_ids(versions.pinned(layout.near_dedup, first["minhash_dedup"]["version"]))
    by_url = {_url(p): p for p in pages}
    # the longest kept page, copied with one added sentence: a near-duplicate of an old document
    docs = [storage.read_parquet(storage.join(layout.near_dedup, s["files"]["data"]), columns=["id", "url", "text"])
            for s in first["minhash_dedup"]["shards"]]
    rows = [r for t in docs for r in t.to_pylist()]
    original = max(rows, key=lambda r: len(r["text"]))
    html = _add_sentence(by_url[original["url"]]["html"])
    write_warc(warcs / "2024-00.warc.gz", [("https://mirror.example.net/copy", html)]
               + [(_url(p), p["html"]) for p in pages[30:35]], "2024-06-01T00:00:00Z")
    write_warc(warcs / "2024-01.warc.gz", [(_url(p), p["html"]) for p in pages[35:40]], "2024-06-02T00:00:00Z")
    second = run_data(cfg)

    made = _run_info(cfg, "ingest", second["ingest"])
    assert (made["shards_made"], made["shards_reused"]) == (2, 6)
    assert second["tokenizer"]["version"] == first["tokenizer"]["version"]  # vocabulary kept across a refresh
    assert second["ingest"]["totals"]["counts"]["read"] == first["ingest"]["totals"]["counts"]["read"] + 11
    # the copy went, with the old page as its keeper; no earlier document was removed
    copy = [r for r in _rejected(cfg, second["minhash_dedup"]) if r["url"] == "https://mirror.example.net/copy"]
    assert len(copy) == 1 and copy[0]["rule"] == "near_duplicate"
    assert json.loads(copy[0]["detail"])["keeper"] == original["id"]
    new_kept = _kept_ids(versions.pinned(layout.near_dedup, second["minhash_dedup"]["version"]))
    assert old_kept < new_kept
    # old shards are referenced, not rewritten
    old_keys = {s["key"] for s in first["minhash_dedup"]["shards"]}
    assert old_keys <= {s["key"] for s in second["minhash_dedup"]["shards"]}
    old_tokens = {s["key"] for s in first["tokenize"]["shards"]}
    assert len(old_tokens & {s["key"] for s in second["tokenize"]["shards"]}) >= len(old_tokens) - 1

    # a fresh run over the union keeps the same documents as the refresh
    fresh = run_data(_config(tmp_path / "fresh", warcs))
    fresh_layout = Layout.for_work_dir(str(tmp_path / "fresh"))
    assert _kept_ids(versions.pinned(fresh_layout.near_dedup, fresh["minhash_dedup"]["version"])) == new_kept
    assert fresh["shard"]["totals"] == second["shard"]["totals"]
    # (its tokenizer is trained on all of it, the refresh keeps the first one: token counts differ)


def test_a_removed_file_gives_a_version_without_it_and_the_old_one_stays(tmp_path, corpus):
    from llm.gc import plan_gc, run_gc
    from llm.lineage_chain import chain, format_lineage

    _, warcs = corpus
    cfg = _config(tmp_path / "work", warcs)
    first = run_data(cfg)
    layout = Layout.for_work_dir(cfg.work_dir)
    gone = {r["id"] for s in first["ingest"]["shards"] if "2020-02" in s["inputs"][0]
            for r in storage.read_parquet(storage.join(layout.docs, s["files"]["data"]), columns=["id"]).to_pylist()}
    assert gone
    (warcs / "2020-02.warc.gz").unlink()
    second = run_data(cfg)
    assert _reran(first, second) == STAGES[:4] + ["tokenize"]  # tokenizer kept; the rest follows the data
    old = versions.pinned(layout.near_dedup, first["minhash_dedup"]["version"])
    assert gone <= _kept_ids(old)  # the old version still reads, files and all
    assert not gone & _kept_ids(layout.near_dedup)

    # lineage: the tokens' chain reaches both corpora: today's shards, and the first run's, which the
    # kept tokenizer was trained on
    entries = chain(layout.tokens)
    assert entries[0]["stage"] == "tokenize" and entries[0]["version"] == second["tokenize"]["version"]
    assert {(e["stage"], e["version"]) for e in entries} == \
        {(s, first[s]["version"]) for s in STAGES[:5]} | {(s, second[s]["version"]) for s in STAGES}
    text = format_lineage(layout.near_dedup)
    assert first["minhash_dedup"]["version"] in text and second["minhash_dedup"]["version"] in text
    assert "pseudonym_key" in text  # the full config of each version is shown

    # gc keeps that lineage; once the tokenizer is retrained, the first corpus is referenced by nothing
    assert first["minhash_dedup"]["version"] in plan_gc(cfg.work_dir).kept_versions[layout.near_dedup]
    retrain = _config(tmp_path / "work", warcs, "tokenizer.on_new_data=retrain")
    third = run_data(retrain)
    assert _reran(second, third) == ["tokenizer", "tokenize"]
    plan = plan_gc(cfg.work_dir)
    assert first["minhash_dedup"]["version"] in plan.removed_versions[layout.near_dedup]
    assert plan.files and all(Path(f).exists() for f in plan.files)  # a dry run deletes nothing
    run_gc(cfg.work_dir, apply=True)
    assert not any(Path(f).exists() for f in plan.files)
    with pytest.raises(FileNotFoundError):
        read_manifest(old)
    again = run_data(retrain)  # what is current survived whole
    assert _reran(third, again) == [] and all(again[s].get("reused") for s in STAGES)
    assert plan_gc(cfg.work_dir).files == []
