"""The tokenizer's training sample: stratified by source and language, counted, deterministic, streamed
from part files, and small in memory whatever the corpus size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from llm import storage
from llm.config import TokenizerConfig
from llm.errors import UserError
from llm.executor import LocalExecutor
from llm.tokenizer.sample import SamplePlan, SampleTexts, build_sample, plan_sample, stratum
from llm.tokenizer.spm import train_sentencepiece
from llm.tokenizer.stage import run_tokenizer_training, tokenizer_uri
from tests.unit.tokenizer.sample_corpus import dev_texts, two_source_rows, write_docs

REPO = Path(__file__).resolve().parents[3]
MB = 1 << 20


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    """~5.7 MB: 20 copies of the 650 development texts under `web` (lang known) and `books` (lang null)."""
    root = tmp_path_factory.mktemp("corpus")
    rows = two_source_rows(shared_data, copies=20)
    files = write_docs(str(root / "docs"), rows, shards=4)
    return root, rows, files


def _by_stratum(rows):
    docs, size = Counter(), Counter()
    for r in rows:
        docs[stratum(r["source"], r["lang"])] += 1
        size[stratum(r["source"], r["lang"])] += len(r["text"].encode())
    return docs, size


def test_weights_are_honoured_and_every_document_is_counted(corpus, tmp_path):
    root, rows, files = corpus
    weights = {"web/de": 0.25, "books": 0.25}  # the other web languages share the remaining half
    parts, section = build_sample(files, str(tmp_path / "sample"), 400_000, weights, 7, LocalExecutor())
    strata = section["strata"]
    docs, size = _by_stratum(rows)
    # Available = what the corpus holds, per stratum; books has no lang column values: `unknown`.
    assert {k: s["available_documents"] for k, s in strata.items()} == dict(docs)
    assert {k: s["available_bytes"] for k, s in strata.items()} == dict(size)
    assert "books/unknown" in strata and len(strata) == 14

    # The parts hold exactly the documents the plan selects, and the counts say so.
    sampled_texts = Counter(SampleTexts(tuple(parts)))
    plan = SamplePlan.from_manifest(section)
    chosen = [r for r in rows if plan.in_sample(r["id"], stratum(r["source"], r["lang"]))]
    assert sampled_texts == Counter(r["text"] for r in chosen)
    got_docs, got_bytes = _by_stratum(chosen)
    chosen_ids = {r["id"] for r in chosen}
    left_docs, _ = _by_stratum([r for r in rows if r["id"] not in chosen_ids])
    for k, s in strata.items():
        assert (s["sampled_documents"], s["sampled_bytes"]) == (got_docs[k], got_bytes[k])
        assert s["sampled_documents"] + left_docs[k] == s["available_documents"]  # read = sampled + not
    assert section["documents"] == len(chosen) and section["bytes"] == sum(got_bytes.values())

    # Shares within 10% of their targets (hundreds of documents per share: a few % of noise).
    others = [k for k in strata if k.startswith("web/") and k != "web/de"]
    assert got_bytes["web/de"] == pytest.approx(100_000, rel=0.1)
    assert got_bytes["books/unknown"] == pytest.approx(100_000, rel=0.1)
    assert sum(got_bytes[k] for k in others) == pytest.approx(200_000, rel=0.1)
    # The unlisted strata keep their natural shares: one fraction for all of them.
    assert len({strata[k]["fraction"] for k in others}) == 1
    assert strata["web/de"]["fraction"] > 2 * strata["web/en"]["fraction"]


def test_same_input_same_parts_and_same_model(corpus, tmp_path):
    root, _, files = corpus
    a = build_sample(files, str(tmp_path / "a"), 200_000, {"*/zh": 0.5}, 0, LocalExecutor())
    b = build_sample(files, str(tmp_path / "b"), 200_000, {"*/zh": 0.5}, 0, LocalExecutor())
    assert a[1] == b[1]
    assert [Path(p).read_bytes() for p in a[0]] == [Path(p).read_bytes() for p in b[0]]
    # Books' documents have no language: `*/zh` claims web's Chinese only.
    assert a[1]["strata"]["web/zh"]["target_bytes"] == 100_000

    cfg = TokenizerConfig(vocab_size=1000, sample_bytes=200_000, sample_weights={"books": 0.5},
                          character_coverage=0.98)
    models = []
    for out in ("tok1", "tok2"):
        manifest = run_tokenizer_training(str(root / "docs"), str(tmp_path / out), cfg, LocalExecutor())
        models.append(storage.read_bytes(tokenizer_uri(str(tmp_path / out))))
        assert not (tmp_path / out / "_sample").exists()  # the scratch parts are gone after training
        assert manifest["sample"]["strata"]["books/unknown"]["target_bytes"] == 100_000
    assert models[0] == models[1]


def test_plan_claims_by_most_specific_key():
    available = {"web/en": 600, "web/de": 400, "code/en": 1000, "books/unknown": 2000}
    plan = plan_sample(available, 1000, {"web/de": 0.1, "web": 0.2, "*/en": 0.3}, seed=0)
    assert plan.targets == {"web/de": 100, "web/en": 200, "code/en": 300, "books/unknown": 400}
    assert plan.fractions == pytest.approx({"web/de": 0.25, "web/en": 1 / 3, "code/en": 0.3, "books/unknown": 0.2})
    # Every stratum listed: shares scale up to the whole sample; a stratum too small is taken whole.
    plan = plan_sample({"a/x": 100, "b/x": 10_000}, 1000, {"a": 0.2, "b": 0.2}, seed=0)
    assert plan.targets == {"a/x": 500, "b/x": 500} and plan.fractions["a/x"] == 1.0
    assert plan_sample({"a/x": 100, "b/x": 100}, 100, {"a": 0.0}, seed=0).fractions == {"a/x": 0.0, "b/x": 1.0}


@pytest.mark.parametrize("weights, match", [
    ({"wbe": 0.5}, r"'wbe' match no text of their own.*web/en"),
    ({"web": 0.5, "*/en": 0.2}, r"'\*/en' match no text"),  # web claims web/en first
    ({"web": 0.0}, "nothing to train on"),
])
def test_plan_refuses_weights_that_cannot_apply(weights, match):
    with pytest.raises(UserError, match=match):
        plan_sample({"web/en": 100}, 50, weights, seed=0)


@pytest.mark.parametrize("weights, match", [
    ({"web/en/x": 0.1}, "sample_weights keys"),
    ({"*": 0.1}, "sample_weights keys"),
    ({"web": 0.7, "code": 0.4}, "sum to 1.1"),
    ({"web": 1.5}, "less than or equal to 1"),
])
def test_config_rejects_bad_weights(weights, match):
    with pytest.raises(ValidationError, match=match):
        TokenizerConfig(sample_weights=weights)


def test_config_rejects_a_sentence_cap_sentencepiece_refuses():
    with pytest.raises(ValidationError, match="input_sentence_size"):
        TokenizerConfig(input_sentence_size=100)
    assert TokenizerConfig(input_sentence_size=101).input_sentence_size == 101


def test_input_sentence_size_caps_what_sentencepiece_loads(shared_data):
    texts = [t for _, t in dev_texts(shared_data)]  # 50 per language, Bulgarian first
    full = train_sentencepiece(texts, 2000, character_coverage=0.9995)
    first = train_sentencepiece(texts, 2000, character_coverage=0.9995, input_sentence_size=120)
    shuffled = [train_sentencepiece(texts, 2000, character_coverage=0.9995, input_sentence_size=120,
                                    shuffle_input_sentence=True, seed=3) for _ in range(2)]
    chinese = {c for t in texts[-50:] for c in t if "\u4e00" <= c <= "\u9fff"}

    def pieces(model):
        from llm.tokenizer.spm import SentencePieceTokenizer
        tok = SentencePieceTokenizer(model)
        return {tok.id_to_piece(i) for i in range(tok.vocab_size)}

    assert chinese & pieces(full)
    assert not chinese & pieces(first)  # the first 120 lines are all Bulgarian
    assert shuffled[0] == shuffled[1] != first


def test_memory_stays_far_below_the_corpus(tmp_path, shared_data):
    """150 MB of text in 8 shards, a 2 MB sample: the driver (with each shard's work run in-process),
    one shard's sampling and the stream to the trainer each peak far below the corpus, below one
    shard, and (Python objects) below the sample itself."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "tests.unit.tokenizer.sample_memory", str(tmp_path),
                          str(shared_data), "150"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["corpus_bytes"] > 140 * MB
    assert m["sampled_bytes"] == pytest.approx(2_000_000, rel=0.2)
    peaks = {k: v for k, v in m.items() if k.endswith("_peak")}
    assert m["shard_text_bytes"] > 18e6
    for where in ("driver", "shard", "stream"):
        # Holding the sampled texts would take more than the sample's bytes in Python objects; reading
        # a whole shard's text column, more than the shard's text in Arrow buffers.
        assert peaks[f"{where}_py_peak"] < m["sampled_bytes"], peaks
        assert peaks[f"{where}_arrow_peak"] < 12 * MB, peaks
    assert peaks["stream_py_peak"] < m["sampled_bytes"] / 2  # one row group (here, one part) at a time
    # Parts are Parquet files of one text column, one per shard.
    parts = sorted((tmp_path / "sample").glob("part-*.parquet"))
    assert len(parts) == 8 and pq.read_schema(parts[0]).names == ["text"]


def test_sentencepiece_line_parts_give_the_iterator_s_model_byte_for_byte(corpus, tmp_path):
    """Parts written as SentencePiece's own training lines (what the stage writes for sentencepiece)
    hold the same documents' lines, and training from them, SentencePiece reading the files itself,
    gives exactly the bytes of training on the documents through the sentence iterator."""
    from llm.tokenizer.spm import training_lines
    from llm.tokenizer.train import train_tokenizer

    _, _, files = corpus
    docs, section = build_sample(files, str(tmp_path / "docs"), 300_000, {}, 3, LocalExecutor())
    lines, same = build_sample(files, str(tmp_path / "lines"), 300_000, {}, 3, LocalExecutor(), line_length=200)
    assert same == section and all(p.endswith(".txt") for p in lines) and SampleTexts(tuple(lines)).are_lines
    assert list(SampleTexts(tuple(lines))) == list(training_lines(SampleTexts(tuple(docs)), 200))
    cfg = TokenizerConfig(vocab_size=600, max_sentence_length=200, character_coverage=0.98)
    from_files = train_tokenizer(SampleTexts(tuple(lines)), cfg)
    assert from_files == train_tokenizer(SampleTexts(tuple(docs)), cfg)
    assert b"part-00000.txt" not in from_files  # the trainer's record of its input files is dropped
