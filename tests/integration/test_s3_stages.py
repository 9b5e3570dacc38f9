"""The data stages with every input and output on s3:// (an S3-compatible server on loopback)."""

from __future__ import annotations

import pytest

from llm import storage
from llm.config import build_config
from llm.data.exact_dedup import run_exact_dedup
from llm.data.ingest import run_ingest
from llm.data.reshard import run_reshard
from llm.data.tokenize import run_tokenize
from llm.executor import LocalExecutor
from llm.layout import Layout
from llm.tokenizer.stage import run_tokenizer_training, tokenizer_uri

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
    dedup = run_exact_dedup(layout.docs, layout.dedup, cfg.data.exact_dedup, cfg.data.shard, "d", ex)
    shards = run_reshard(layout.dedup, layout.shards, cfg.data.shard, "s", ex)
    tok = run_tokenizer_training(layout.shards, layout.tokenizer, cfg.tokenizer, "t", ex)
    tokens = run_tokenize(layout.shards, tokenizer_uri(layout.tokenizer), layout.tokens, cfg.tokenize, "k", ex)
    assert dedup["totals"]["counts"]["read"] == docs["totals"]["counts"]["kept"]
    assert shards["totals"]["rows"] == dedup["totals"]["counts"]["kept"]
    assert tok["vocab_size"] == 1000
    assert sum(tokens["tokens"]["totals"].values()) > 1000
    listed = storage.list_files("s3://llmpipe-test/work/tokens", ".bin")
    assert listed and all(u.startswith("s3://llmpipe-test/work/tokens/") for u in listed)
    # a rerun finds every shard done and rewrites identical manifests
    before = storage.read_bytes(storage.join(layout.docs, "_manifest.json"))
    run_ingest(cfg, "", layout.docs, ex)
    assert storage.read_bytes(storage.join(layout.docs, "_manifest.json")) == before
