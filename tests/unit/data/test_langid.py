"""Language ID: accuracy per language on the real development set, thresholds and keep-list, mixed and
long documents, bad input."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest

from llm.config import LangIdConfig
from llm.data.langid import LangIdStep, identify, sample, supported_languages
from llm.data.normalize import NormalizeStep
from llm.config import NormalizeConfig


def test_accuracy_per_language_on_dev_set(shared_data):
    rows = [json.loads(line) for line in (shared_data / "langid_dev.jsonl").read_text(encoding="utf-8").splitlines()]
    supported = set(supported_languages())
    rows = [r for r in rows if r["label"] in supported]
    # The pipeline identifies normalized text (terminal colour codes and controls removed).
    texts = NormalizeStep(NormalizeConfig()).normalize(pa.array([r["text"] for r in rows])).to_pylist()
    langs, _ = identify(texts)
    per = defaultdict(lambda: [0, 0])
    for r, lang in zip(rows, langs):
        per[r["label"]][0] += lang == r["label"]
        per[r["label"]][1] += 1
    report = {k: round(a / n, 2) for k, (a, n) in sorted(per.items())}
    overall = sum(a for a, _ in per.values()) / len(rows)
    print(f"langid accuracy {overall:.3f} per language {report}")
    assert len(per) == 13 and overall >= 0.95
    assert min(report.values()) >= 0.85, report


def _docs(texts, source="web"):
    return pa.table({"id": [str(i) for i in range(len(texts))], "text": texts, "source": [source] * len(texts)})


def test_keep_list_and_per_language_threshold():
    en = "The committee published its annual report on the state of the city's public libraries and parks."
    de = "Der Ausschuss hat seinen jährlichen Bericht über den Zustand der öffentlichen Bibliotheken veröffentlicht."
    out = LangIdStep(LangIdConfig(keep=["en"])).apply(_docs([en, de]))
    assert out.kept.column("lang").to_pylist() == ["en"]
    dropped = out.dropped.to_pylist()[0]
    assert dropped["rule"] == "lang_not_kept" and dropped["detail"] == "lang=de" and dropped["value"] > 0.5
    strict = LangIdStep(LangIdConfig(keep=[], min_confidence_per_language={"en": 1.01})).apply(_docs([en, de]))
    assert strict.kept.column("lang").to_pylist() == ["de"]
    assert strict.dropped.to_pylist()[0]["rule"] == "lang_low_confidence"
    assert strict.dropped.to_pylist()[0]["threshold"] == pytest.approx(1.01)


def test_other_sources_pass_with_null_signals():
    out = LangIdStep(LangIdConfig()).apply(_docs(["def f():\n    return 1\n"], source="code"))
    assert out.kept.num_rows == 1 and out.kept.column("lang").to_pylist() == [None]


def test_mixed_document_gets_dominant_language_and_long_ones_are_bounded():
    en = "This is a long English paragraph about the history of the railway and the people who built it. " * 20
    es = "Una frase corta en español. "
    langs, _ = identify([es + en + es])
    assert langs == ["en"]
    long = en * 5000  # ~9.6 MB
    assert len(sample(long, 4000)) <= 4002
    assert identify([long])[0] == ["en"]


def test_bad_input_gets_a_decision():
    texts = ["", "\x00\x01\x02\x03" * 50, "\ufffd" * 100, "שלום עולם, זהו טקסט בעברית שנכתב מימין לשמאל.",
             "这是一个没有空格的中文句子我们用它来测试语言识别", "x" * 10_000_000]
    out = LangIdStep(LangIdConfig(keep=[])).apply(_docs(texts))
    assert out.kept.num_rows + out.dropped.num_rows == len(texts)
    langs = dict(zip(out.kept.column("id").to_pylist(), out.kept.column("lang").to_pylist()))
    assert langs.get("3") == "he" and langs.get("4") == "zh"
    rules = dict(zip(out.dropped.column("id").to_pylist(), out.dropped.column("rule").to_pylist()))
    assert rules.get("0") == "lang_low_confidence"


def test_a_score_at_the_threshold_is_dropped_as_in_datatrove(monkeypatch):
    # datatrove's LanguageFilter keeps a document only when its score is above the threshold.
    import llm.data.langid as langid

    threshold = LangIdConfig().min_confidence_per_language["en"]
    scores = [threshold, float(np.nextafter(threshold, 1.0))]
    monkeypatch.setattr(langid, "identify", lambda texts, max_chars: (["en"] * len(texts), np.array(scores)))
    out = LangIdStep(LangIdConfig()).apply(_docs(["a", "b"]))
    assert out.kept.column("id").to_pylist() == ["1"]
    dropped = out.dropped.to_pylist()[0]
    assert dropped["rule"] == "lang_low_confidence" and dropped["value"] == dropped["threshold"] == threshold


def test_default_english_threshold_makes_finewebs_cut_on_dev_set(shared_data):
    # FineWeb's fastText at 0.65 keeps 48 of the 50 English dev texts among 50 kept (precision and keep
    # rate 0.96, measured by bench/langid_threshold.py); py3langid's default must make the same cut.
    rows = [json.loads(line) for line in (shared_data / "langid_dev.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = NormalizeStep(NormalizeConfig()).normalize(pa.array([r["text"] for r in rows])).to_pylist()
    out = LangIdStep(LangIdConfig()).apply(_docs(texts))
    labels = [r["label"] for r in rows]
    kept = [labels[int(i)] for i in out.kept.column("id").to_pylist()]
    precision, keep = kept.count("en") / len(kept), kept.count("en") / labels.count("en")
    assert precision >= 0.96 and keep >= 0.96, (precision, keep)
