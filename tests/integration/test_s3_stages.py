"""The data stages with every input and output on s3:// (an S3-compatible server on loopback)."""

from __future__ import annotations

import pytest

from llm import storage
from llm.config import build_config
from llm.data.exact_dedup import run_exact_dedup
from llm.data.ingest import run_ingest
from llm.data.reshard import run_reshard
from llm.tokenizer.tokenize import run_tokenize
from llm.executor import LocalExecutor
from llm.layout import Layout
from llm.tokenizer.stage import run_tokenizer_training

pytestmark = pytest.mark.integration


def test_data_stages_read_and_write_s3(s3_endpoint, shared_data):
    # the WARC input itself lives in the bucket, as a Common Crawl segment would
    for name in ["iana.warc.gz", "example.warc.gz", "example-bad.warc.gz.bad"]:
        storage.upload_file(str(shared_data / "warc" / name), f"s3://llmpipe-test/raw/{name}")
    cfg = build_config({}, [
        "work_dir=s3://llmpipe-test/work",
        "data.sources=[{kind: warc, name: web, uri: 's3://llmpipe-test/raw', glob: '*.warc.gz'}]",
        "tokenizer.vocab_size=1000",
        # this test is about storage: keep the sample archive's pages whatever their language or quality
        "data.quality.enabled=false", "data.langid.enabled=false",
    ])
    layout = Layout.for_work_dir(cfg.work_dir)
    assert layout.docs == "s3://llmpipe-test/work/datasets/docs"
    ex = LocalExecutor()
    docs = run_ingest(cfg, "", layout.docs, ex)
    counts = docs["totals"]["counts"]
    assert counts["kept"] >= 15 and counts["dropped"].get("unsupported_content_type", 0) > 0
    assert counts["read"] == counts["kept"] + sum(counts["dropped"].values()) + counts["quarantined"]
    dedup = run_exact_dedup(layout.docs, layout.dedup, cfg.data.exact_dedup, cfg.data.shard, ex)
    shards = run_reshard(layout.dedup, layout.shards, cfg.data.shard, ex)
    tok = run_tokenizer_training(layout.shards, layout.tokenizer, cfg.tokenizer, ex)
    tokens = run_tokenize(layout.shards, layout.tokenizer, layout.tokens, cfg.tokenize, ex)
    assert dedup["totals"]["counts"]["read"] == docs["totals"]["counts"]["kept"]
    assert shards["totals"]["rows"] == dedup["totals"]["counts"]["kept"]
    assert tok["vocab_size"] == 1000
    assert sum(tokens["tokens"]["totals"].values()) > 1000
    listed = storage.list_files("s3://llmpipe-test/work/tokens", ".bin")
    assert listed and all(u.startswith("s3://llmpipe-test/work/tokens/") for u in listed)
    # a rerun finds every shard done and rewrites identical manifests
    before = storage.read_bytes(storage.join(layout.docs, "_manifest.json"))
    assert run_ingest(cfg, "", layout.docs, ex)["reused"]
    assert storage.read_bytes(storage.join(layout.docs, "_manifest.json")) == before
    # a new object under the prefix (known by its ETag) is one new shard; every other is reused
    from llm import versions

    storage.upload_file(str(shared_data / "warc" / "example2.warc.gz"), "s3://llmpipe-test/raw/more/example2.warc.gz")
    grown = run_ingest(cfg, "", layout.docs, ex)
    run = versions.run_info(layout.docs, grown["version"])
    assert (run["shards_made"], run["shards_reused"]) == (1, docs["totals"]["shards"])
    assert {s["key"] for s in docs["shards"]} < {s["key"] for s in grown["shards"]}
    assert versions.read(versions.pinned(layout.docs, docs["version"]))["totals"] == docs["totals"]


def test_minhash_and_its_refresh_on_s3_match_the_local_run(s3_endpoint, shared_data, tmp_path):
    from llm.config import MinHashConfig, ShardConfig
    from llm.data.minhash.planted import planted_corpus, word_pool
    from llm.data.minhash.stage import run_minhash_dedup
    from tests.unit.data.minhash.conftest import write_dataset

    corpus = planted_corpus(word_pool(shared_data), 300, seed=5)
    urls = [f"https://example.org/{i % 290}" for i in range(len(corpus.texts))]  # repeated URLs too
    results = {}
    for root in ("s3://llmpipe-test/mh", str(tmp_path)):
        write_dataset(f"{root}/in", corpus.texts, shards=3, urls=urls)
        first = run_minhash_dedup(f"{root}/in", f"{root}/out", MinHashConfig(min_buckets=2), ShardConfig(),
                                  LocalExecutor())
        write_dataset(f"{root}/new", corpus.texts[:60], shards=1, tag="n")
        refresh = run_minhash_dedup(f"{root}/new", f"{root}/refresh", MinHashConfig(index_uri=f"{root}/out"),
                                    ShardConfig(), LocalExecutor())
        rows = []
        for out in ("out", "refresh"):
            for uri in storage.list_files(f"{root}/{out}/rejected", ".parquet"):
                rows += storage.read_parquet(uri, columns=["id", "rule", "value", "detail"]).to_pylist()
        assert not storage.list_files(f"{root}/out/_work") and not storage.list_files(f"{root}/refresh/_work")
        results[root] = (first["totals"], first["minhash"], refresh["totals"], rows)
    s3, local = results.values()
    assert s3 == local
    dropped = s3[0]["counts"]["dropped"]
    assert dropped["near_duplicate"] > 10 and dropped["url_duplicate"] >= 5
    # every refreshed document that was kept before is an exact copy of one in the index
    assert s3[2]["counts"]["dropped"].get("near_duplicate", 0) >= 40
