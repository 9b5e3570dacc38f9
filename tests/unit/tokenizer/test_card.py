"""The tokenizer card on real multilingual text (13 languages): the stage writes it beside the model
and lists it, its figures match a direct computation on the same held-out documents (which the
training sample never saw), unknown and byte-fallback tokens and round-trip failures are told apart,
and `llmpipe tokenizer-card` prints it, computing it for a version made without one."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import sentencepiece as spm

from llm import storage, versions
from llm.config import TokenizerConfig
from llm.data.dataset import read_manifest
from llm.executor import LocalExecutor
from llm.tokenizer import SentencePieceTokenizer, load_tokenizer, train_sentencepiece
from llm.tokenizer.card import HeldOut, measure_shard, measure_texts, read_card
from llm.tokenizer.sample import SamplePlan, stratum
from llm.tokenizer.stage import run_tokenizer_training, tokenizer_uri
from tests.unit.tokenizer.card_setup import langid_records, write_lang_dataset

CFG = TokenizerConfig(vocab_size=1000, sample_bytes=30000, character_coverage=0.98, card_bytes=60000,
                      card_max_share=0.7)
LATIN = {"en", "de", "es", "it", "pt", "eo", "ga"}


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    docs, tok = str(root / "docs"), str(root / "tok")
    rows = write_lang_dataset(docs, langid_records(shared_data), shards=3)
    manifest = run_tokenizer_training(docs, tok, CFG, LocalExecutor())
    return {"docs": docs, "tok": tok, "rows": rows, "manifest": manifest, "card": read_card(tok, manifest)}


def _held_out_rows(trained) -> list[dict]:
    """The held-out documents, chosen here from the rows themselves with the stage's rule."""
    card = trained["card"]
    held = HeldOut(card["held_out"]["seed"], card["held_out"]["fraction"])
    return [r for r in trained["rows"] if held.selected(r["id"]) and not _sampled(trained, r)]


def _sampled(trained, row) -> bool:
    """Whether the training sample held `row`, by the plan the tokenizer manifest records."""
    plan = SamplePlan.from_manifest(trained["manifest"]["sample"])
    return plan.in_sample(row["id"], stratum(row["source"], row["lang"]))


def test_stage_writes_the_card_beside_the_model_and_lists_it(trained):
    manifest, tok = trained["manifest"], trained["tok"]
    for role in ("card", "card_md"):
        rel = manifest["files"][role]
        assert rel in versions.referenced(manifest)  # so garbage collection keeps it
        assert storage.exists(storage.join(tok, rel))
    assert json.loads(storage.read_text(storage.join(tok, manifest["files"]["card"]))) == trained["card"]
    assert "| zh |" in storage.read_text(storage.join(tok, manifest["files"]["card_md"]))


def test_held_out_documents_are_outside_the_sample_and_bounded(trained):
    card, manifest = trained["card"], trained["manifest"]
    held = _held_out_rows(trained)
    sampled = [r for r in trained["rows"] if _sampled(trained, r)]
    assert len(sampled) == manifest["sample"]["documents"]  # the recorded plan is the sample that was taken
    assert held and not {r["text"] for r in sampled} & {r["text"] for r in held}
    assert card["held_out"]["documents"] == len(held) == card["overall"]["documents"]
    assert card["held_out"]["bytes"] == sum(len(r["text"].encode()) for r in held)
    # About card_bytes (a hash fraction, not a cut), well short of everything the sample left.
    total = sum(len(r["text"].encode()) for r in trained["rows"])
    assert 0.7 * CFG.card_bytes < card["held_out"]["bytes"] < min(1.3 * CFG.card_bytes, total - manifest["sample"]["bytes"])
    # The predicate decides: a sample that took everything leaves no held-out text.
    everything = measure_shard(_shard_files(trained)[0], load_tokenizer(tokenizer_uri(trained["tok"])).model_bytes,
                               lambda d, s, l: True, HeldOut(0, 1.0))
    assert everything["strata"] == {} and len(everything["ids_seen"]) == 0


def test_a_sample_as_large_as_the_corpus_still_leaves_the_card_its_share(trained, tmp_path):
    cfg = CFG.model_copy(update={"sample_bytes": 10**9, "card_max_share": 0.1})
    manifest = run_tokenizer_training(trained["docs"], str(tmp_path / "tok"), cfg, LocalExecutor())
    card, rows = read_card(str(tmp_path / "tok"), manifest), trained["rows"]
    total = sum(len(r["text"].encode()) for r in rows)
    # Every document is in exactly one of the two: the sample took all but the card's reserved share.
    assert manifest["sample"]["documents"] + card["held_out"]["documents"] == len(rows)
    assert manifest["sample"]["bytes"] + card["held_out"]["bytes"] == total
    assert 0.05 * total < card["held_out"]["bytes"] < 0.15 * total


def _shard_files(trained) -> list[str]:
    return [storage.join(trained["docs"], s["files"]["data"]) for s in read_manifest(trained["docs"])["shards"]]


def test_per_language_figures_match_a_direct_computation(trained):
    card, tok = trained["card"], load_tokenizer(tokenizer_uri(trained["tok"]))
    held = _held_out_rows(trained)
    langs = sorted({r["lang"] for r in held})
    assert len(langs) == 13 and sorted(card["by_language"]) == langs
    seen = set()
    for lang in langs:
        docs = [r["text"] for r in held if r["lang"] == lang]
        ids = [tok.encode(t) for t in docs]
        seen.update(i for d in ids for i in d)
        figures = card["by_language"][lang]
        n_bytes, n_tokens = sum(len(t.encode("utf-8")) for t in docs), sum(len(d) for d in ids)
        assert (figures["documents"], figures["bytes"], figures["tokens"]) == (len(docs), n_bytes, n_tokens)
        assert figures["bytes_per_token"] == pytest.approx(n_bytes / n_tokens, abs=1e-4)
        assert 1.0 < figures["bytes_per_token"] < 6.0  # plausible for a 1000-piece model
        assert figures["unk_rate"] == 0 and figures["roundtrip_failures"] == 0  # byte fallback, identity rules
    # Chinese, at coverage 0.98 on a small sample, leans on byte fallback far more than Latin text.
    assert card["by_language"]["zh"]["byte_fallback_rate"] > 5 * card["by_language"]["en"]["byte_fallback_rate"]
    assert sum(s["documents"] for s in card["by_source"].values()) == card["overall"]["documents"]
    assert card["vocab_usage"] == {"ids_seen": len(seen), "ids_never_used": 1000 - len(seen),
                                   "share": round(len(seen) / 1000, 6)}
    assert card["special_ids"]["<unk>"] == 1 and card["special_ids"]["<|user|>"] == tok.piece_id("<|user|>")
    assert (card["library"], card["model_type"], card["vocab_size"]) == ("sentencepiece", "bpe", 1000)
    assert card["byte_fallback_ids"] == 256


def _docs(records, keep) -> list[tuple]:
    return [(f"d{i}", r["text"], r["source"], r["label"]) for i, r in enumerate(records) if keep(r["label"])]


def test_unseen_scripts_are_unknown_only_without_byte_fallback(shared_data):
    records = langid_records(shared_data)
    latin = [r["text"] for r in records if r["label"] in LATIN]
    unseen = _docs(records, lambda lang: lang in ("ru", "bg", "zh"))  # Cyrillic and Han: not in the sample
    cards = {}
    for fallback in (True, False):
        tok = SentencePieceTokenizer(train_sentencepiece(latin, 500, byte_fallback=fallback, character_coverage=1.0))
        cards[fallback] = measure_texts(tok, unseen)["strata"]["overall"]
    with_bytes, without = cards[True], cards[False]
    assert with_bytes["unk_tokens"] == 0 and with_bytes["byte_fallback_tokens"] > 0
    assert with_bytes["roundtrip_failures"] == 0
    assert without["unk_tokens"] > 0 and without["byte_fallback_tokens"] == 0
    # `<unk>` decodes to ' ⁇ ', so every document with an unknown character fails the round trip.
    assert without["roundtrip_failures"] == without["documents"] == len(unseen)


def test_a_normalising_model_fails_the_round_trip_at_the_first_changed_character(shared_data):
    latin = [r["text"].lower() for r in langid_records(shared_data) if r["label"] in LATIN]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(latin), model_writer=model, vocab_size=400,
                                   normalization_rule_name="nmt_nfkc_cf", remove_extra_whitespaces=False,
                                   byte_fallback=True, minloglevel=2)
    tok = SentencePieceTokenizer(model.getvalue())
    docs = [("a", "all lower case", "s", "en"), ("b", "mid Upper", "s", "en"), ("c", "Upper first", "t", "de")]
    strata = measure_texts(tok, docs)["strata"]
    overall = strata["overall"]
    assert overall["roundtrip_failures"] == 2
    assert overall["first_roundtrip_failure"] == {"doc_id": "b", "char": 4, "chars": 9}
    assert strata["language:de"]["first_roundtrip_failure"] == {"doc_id": "c", "char": 0, "chars": 11}
    assert strata["source:s"]["roundtrip_failures"] == 1
    assert "Upper" not in json.dumps(strata)  # positions only, never the text


def test_cli_prints_the_card_and_computes_it_for_a_version_without_one(trained, capsys, tmp_path):
    from flows.cli import main

    assert main(["tokenizer-card", trained["tok"]]) == 0
    stored = capsys.readouterr().out
    assert "| language |" in stored and "| zh |" in stored and "Vocabulary usage" in stored
    # A version made before cards: its manifest without the card files; the card comes from its shards.
    old = tmp_path / "old"
    storage.upload_dir(trained["tok"], str(old))
    manifest = read_manifest(str(old))
    for role in ("card", "card_md"):
        storage.delete(str(old / manifest["files"].pop(role)))
    manifest["parents"]["shards"]["uri"] = storage.absolute(trained["docs"])
    (old / "_manifest.json").write_text(json.dumps(manifest))
    assert main(["tokenizer-card", str(old)]) == 0
    assert capsys.readouterr().out == stored
    # ... and says why it cannot once those shards are gone.
    manifest["parents"]["shards"]["uri"] = str(tmp_path / "gone")
    (old / "_manifest.json").write_text(json.dumps(manifest))
    assert main(["tokenizer-card", str(old)]) == 2
    err = capsys.readouterr().err
    assert "no card" in err and "input shards" in err and str(tmp_path / "gone") in err


def test_vocabulary_usage_counts_distinct_ids(shared_data):
    tok = SentencePieceTokenizer(train_sentencepiece(["abc abc abd"] * 20, 300, character_coverage=1.0))
    docs = [("x", "abc", "s", None), ("y", "abd abc", "s", None)]
    measured = measure_texts(tok, docs)
    expected = np.unique(np.concatenate([tok.encode("abc"), tok.encode("abd abc")]))
    assert measured["ids_seen"].tolist() == expected.tolist()
    assert list(measured["strata"]) == ["overall", "language:(none)", "source:s"]


@pytest.mark.slow  # ~11 s on 2 cores: most of it MLflow building its SQLite store (tables, migrations)
def test_the_tokenizer_task_logs_the_card_to_mlflow(shared_data, tmp_path, monkeypatch):
    import tasks.runtime
    from llm.config import PipelineConfig
    from llm.layout import Layout
    from llm.tracking import Tracker
    from tasks.data import tokenizer

    # The stage's work in this process (no Ray); MLflow is the real local store of the work directory.
    monkeypatch.setattr(tasks.runtime, "RayExecutor", lambda **_: LocalExecutor())
    cfg = PipelineConfig(work_dir=str(tmp_path / "work"), tokenizer=CFG.model_dump())
    write_lang_dataset(Layout.for_work_dir(cfg.work_dir).shards, langid_records(shared_data), shards=2)
    tracker = Tracker(cfg.tracking, cfg.work_dir)
    parent = tracker.start_run("pipeline")
    summary = tokenizer.fn(cfg, parent.run_id)
    client = tracker.client()
    (child,) = client.search_runs([tracker.experiment_id()], f"tags.mlflow.parentRunId = '{parent.run_id}'")
    tok_dir = Layout.for_work_dir(cfg.work_dir).tokenizer
    card = read_card(tok_dir, read_manifest(tok_dir))
    metrics = child.data.metrics
    assert metrics["bytes_per_token"] == pytest.approx(card["overall"]["bytes_per_token"]) == summary["bytes_per_token"]
    assert metrics["vocab_usage"] == pytest.approx(card["vocab_usage"]["share"])
    assert metrics["unk_rate"] == 0 and metrics["roundtrip_failures"] == 0 and metrics["byte_fallback_rate"] > 0
    logged = {a.path for a in client.list_artifacts(child.info.run_id, "tokenizer")}
    assert {"tokenizer/spm.model", "tokenizer/spm.vocab", "tokenizer/card.json", "tokenizer/card.md"} <= logged


def test_a_hugging_face_tokenizer_gets_the_same_card(shared_data):
    from tokenizers import Tokenizer as RustTokenizer, decoders, models, pre_tokenizers, trainers

    from llm.tokenizer import tokenizer_from_bytes
    from llm.tokenizer.card import build_card

    records = langid_records(shared_data)
    rust = RustTokenizer(models.BPE())
    rust.pre_tokenizer, rust.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    rust.train_from_iterator([r["text"] for r in records if r["label"] in LATIN], trainer)
    tok = tokenizer_from_bytes(rust.to_str().encode())
    docs = _docs(records, lambda lang: lang in ("ru", "zh", "en"))
    card = build_card(tok, [measure_texts(tok, docs)], HeldOut(0, 1.0))
    assert (card["library"], card["model_type"], card["byte_fallback_ids"]) == ("hf", "bpe", 0)
    # Byte-level BPE: every script is bytes, so nothing is unknown and every document round-trips.
    zh = card["by_language"]["zh"]
    assert zh["unk_rate"] == 0 and zh["byte_fallback_rate"] == 0 and zh["roundtrip_failures"] == 0
    n_bytes = sum(len(d[1].encode()) for d in docs if d[3] == "zh")
    assert zh["bytes_per_token"] == pytest.approx(n_bytes / sum(len(tok.encode(d[1])) for d in docs if d[3] == "zh"),
                                                  abs=1e-4)
    assert card["special_ids"] == {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
