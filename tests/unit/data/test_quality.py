"""Quality rules: each rule set fires on text built to fail it, every signal is a column, thresholds can
change without recomputing, and bad input ends in a decision with a reason."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from llm.config import QualityConfig
from llm.data.filtering import decide
from llm.data.quality import QualityStep, compute_signals, quality_rules

GOOD = ("The river rises in the hills to the north of the town and flows south to the sea. "
        "It was used for centuries to carry timber and grain, and the old mills still stand along its banks. "
        "In the spring the water is high and fast, and the town holds a boat race that draws visitors. "
        "The bridge that crosses it was built of stone and has been repaired many times since then. "
        "Today the path along the river is a favourite walk for the people who live in the valley.\n"
        "Fishing is allowed with a permit from the town hall, which is open every weekday morning.")


def _docs(texts, source="web"):
    return pa.table({"id": [str(i) for i in range(len(texts))], "text": texts, "source": [source] * len(texts)})


def _rule(text, cfg=None):
    out = QualityStep(cfg or QualityConfig()).apply(_docs([text]))
    return None if out.kept.num_rows else out.dropped.to_pylist()[0]


def test_good_prose_is_kept_with_every_signal_stored():
    step = QualityStep(QualityConfig())
    out = step.apply(_docs([GOOD]))
    assert out.kept.num_rows == 1
    row = out.kept.to_pylist()[0]
    assert set(step.signals) <= set(row) and all(row[s] is not None for s in step.signals)
    assert row["gopher_words"] > 90 and row["gopher_stop_words"] >= 4 and row["c4_sentences"] >= 5


GROUPS = ("gopher_repetition", "gopher", "c4", "fineweb")


def _only(group: str) -> QualityConfig:
    return QualityConfig.model_validate({g: {"enabled": g == group} for g in GROUPS})


@pytest.mark.parametrize("group,text,rule", [
    ("gopher", "Too short to be a document. The end.", "gopher_min_words"),
    ("gopher_repetition", "buy cheap pills now " * 60, "rep_top_2gram"),
    ("gopher", GOOD.replace(".", " #tag #tag #tag #tag #tag."), "gopher_hash_ratio"),
    ("gopher", "\n".join(["- item number %d of the list that goes on" % i for i in range(60)]), "gopher_bullet_lines"),
    ("c4", GOOD + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", "c4_lorem_ipsum"),
    ("c4", GOOD + "\nThe config is written as {key: value} in the file.", "c4_curly_bracket"),
    ("c4", GOOD.replace(". ", "\n"), "c4_min_sentences"),
    ("fineweb", GOOD.replace(".", ""), "fw_line_punct_ratio"),
    ("fineweb", "\n".join(w + "." for w in GOOD.split(" ")), "fw_short_line_ratio"),
    ("fineweb", GOOD + "\n" + GOOD.splitlines()[1], "fw_dup_line_char_ratio"),
])
def test_rule_sets_fire_with_value_and_threshold(group, text, rule):
    dropped = _rule(text, _only(group))
    assert dropped is not None and dropped["rule"] == rule, dropped and dropped["rule"]
    assert dropped["stage"] == "quality" and dropped["threshold"] is not None and dropped["value"] is not None
    assert QualityStep(QualityConfig()).apply(_docs([GOOD])).kept.num_rows == 1


def test_repetition_signals_on_known_text():
    para = "This paragraph is repeated word for word in the document."
    sig = compute_signals(pa.array([f"{para}\n\n{para}\n\nA different ending paragraph here."]), QualityConfig())
    assert sig["rep_dup_para_frac"][0] == pytest.approx(1 / 3)
    assert sig["rep_dup_line_frac"][0] == pytest.approx(1 / 3)
    assert sig["rep_dup_5gram_char_frac"][0] > 0.3


def test_rules_switch_off_and_refilter_from_stored_columns():
    step = QualityStep(QualityConfig())
    out = step.apply(_docs([GOOD, "Too short to be a document. The end."]))
    table = pa.concat_tables([out.kept, out.dropped.select(out.kept.column_names)])
    relaxed = QualityConfig.model_validate({"gopher": {"min_words": 5}, "c4": {"min_sentences": None},
                                            "gopher_repetition": {"enabled": False}})
    first, _ = decide(table, quality_rules(relaxed))  # no signal recomputed
    assert first.tolist() == [-1, -1]
    off = QualityConfig.model_validate({"gopher": {"enabled": False}, "c4": {"enabled": False},
                                        "fineweb": {"enabled": False}})
    assert all(r.name.startswith("rep_") for r in quality_rules(off))


def test_code_and_other_sources_pass_untouched():
    out = QualityStep(QualityConfig()).apply(_docs(["x = 1\n"], source="code"))
    assert out.kept.num_rows == 1 and out.kept.column("gopher_words").to_pylist() == [None]


def test_bad_input_each_gets_a_decision_with_reason():
    texts = ["", "\x00\xff\ufffd" * 300, "שלום עולם " * 80, "这是一个没有空格的中文句子" * 50, GOOD * 12_000]
    out = QualityStep(QualityConfig()).apply(_docs(texts))
    assert out.kept.num_rows + out.dropped.num_rows == len(texts)
    assert len(GOOD * 12_000) > 5_000_000
    reasons = dict(zip(out.dropped.column("id").to_pylist(), out.dropped.column("rule").to_pylist()))
    assert reasons["0"] == "gopher_min_words" and reasons["1"] and reasons["3"]
    assert reasons["4"].startswith("rep_")  # the same paragraph 12,000 times


def test_real_pages_and_mails(shared_data):
    rows = [json.loads(line) for line in (shared_data / "mail_dev.jsonl").read_text(encoding="utf-8").splitlines()]
    out = QualityStep(QualityConfig()).apply(_docs([r["text"] for r in rows]))
    assert out.kept.num_rows + out.dropped.num_rows == len(rows)
    assert not np.isnan(np.array(out.dropped.column("value").to_pylist(), dtype=float)).all()


NAVIGATION = "\n".join(["Home", "About us", "Contact", "Enable javascript in your browser to see the map.",
                        "We use cookies to improve this site.", "Sign in", "", "Privacy"])


def test_c4_removes_lines_and_counts_them():
    step = QualityStep(QualityConfig())
    docs = _docs([GOOD + "\n" + NAVIGATION, "Home\nAbout us", "print(x)"])
    docs = docs.set_column(2, "source", pa.array(["web", "web", "code"]))
    out = step.apply(docs)
    kept = {r["id"]: r for r in out.kept.to_pylist()}
    assert kept["0"]["text"] == GOOD and kept["0"]["c4_removed_lines"] == 7  # blank lines are not counted
    assert kept["2"]["text"] == "print(x)" and kept["2"]["c4_removed_lines"] is None  # not prose: untouched
    dropped = out.dropped.to_pylist()
    assert [d["id"] for d in dropped] == ["1"] and dropped[0]["text"] == "Home\nAbout us"  # judged text kept
    assert dropped[0]["c4_removed_lines"] == 2


def test_fineweb_measures_the_text_c4_left():
    text = GOOD + "\n" + NAVIGATION + "\nShop\nBlog\nCareers\nPress\nHelp"  # 10 short lines of 14
    on = QualityStep(QualityConfig()).apply(_docs([text]))
    assert on.kept.num_rows == 1 and on.kept.column("fw_short_line_ratio").to_pylist() == [0.0]
    off_cfg = QualityConfig.model_validate({"c4": {"remove_lines": False}})
    off = QualityStep(off_cfg).apply(_docs([text]))
    assert off.kept.num_rows == 0 and off.dropped.column("rule").to_pylist()[0].startswith("fw_")
    assert "c4_removed_lines" not in off.dropped.column_names
    assert off.dropped.column("text").to_pylist() == [text]


CATALOGUE = "\n".join(f"Item {i} in the catalogue of garden tools for sale" for i in range(30))


def test_fineweb_line_punctuation_rule_sees_unpunctuated_lines():
    # FineWeb's pipeline runs C4 without its terminal-punctuation line rule (FineWeb's line-punctuation
    # ratio takes its place); with both on, C4 would leave only punctuated lines and the ratio could not fire.
    text = CATALOGUE + "\n" + GOOD  # 2 punctuated lines of 32
    cfg = QualityConfig.model_validate({"gopher": {"enabled": False}, "gopher_repetition": {"enabled": False}})
    dropped = _rule(text, cfg)
    assert dropped is not None and dropped["rule"] == "fw_line_punct_ratio"
    assert dropped["value"] == pytest.approx(2 / 32)
    c4_as_published = cfg.model_copy(update={"c4": cfg.c4.model_copy(update={"terminal_punct_lines": True})})
    out = QualityStep(c4_as_published).apply(_docs([text]))
    assert out.kept.column("text").to_pylist() == [GOOD] and out.kept.column("c4_removed_lines").to_pylist() == [30]
    # C4 alone keeps its own rule by default: the unpunctuated lines do not count as sentences.
    assert QualityStep(_only("c4")).apply(_docs([text])).kept.column("text").to_pylist() == [GOOD]


@pytest.mark.parametrize("rule", quality_rules(QualityConfig()), ids=lambda r: r.name)
def test_a_value_at_the_threshold_passes_as_in_datatrove(rule):
    # datatrove drops on `value < min` and `value > max` for every Gopher, C4 and FineWeb rule: the
    # threshold itself passes, the next float beyond it fails.
    beyond = np.nextafter(rule.threshold, -np.inf if rule.kind == "min" else np.inf)
    first, _ = decide(pa.table({rule.signal: [rule.threshold, beyond]}), [rule])
    assert first.tolist() == [-1, 0]


def test_line_boundaries_match_datatrove():
    cfg = QualityConfig()
    # C4: a line of exactly `min_words_per_line` words counts, one fewer does not; a word of exactly
    # `max_word_length` characters is allowed, one more is not.
    three, two = "Three words here.", "Two words."
    longest, too_long = "Long " + "a" * 1000 + " word.", "Long " + "a" * 1001 + " word."
    sig = compute_signals(pa.array([three, two, longest, too_long]), cfg)
    assert sig["c4_counted_lines"].tolist() == [1, 0, 1, 0]
    # FineWeb: a line of exactly `short_line_chars` characters is short.
    sig = compute_signals(pa.array(["x" * 30 + "\n" + "y" * 31]), QualityConfig.model_validate({"c4": {"enabled": False}}))
    assert sig["fw_short_line_ratio"].tolist() == [0.5]
    # Gopher: exactly `min_words` words is enough, one fewer is not.
    words = GOOD.split()
    for n, rule in ((50, None), (49, "gopher_min_words")):
        dropped = _rule(" ".join(words[:n]), _only("gopher"))
        assert (dropped and dropped["rule"]) == rule


@pytest.mark.parametrize("overrides", [{}, {"c4": {"remove_lines": False}}, {"fineweb": {"enabled": False}},
                                       {"c4": {"enabled": False}}])
def test_measuring_until_dropped_makes_the_same_decisions_with_less_measured(shared_data, overrides):
    texts = []
    for name in ("html_dev.jsonl", "mail_dev.jsonl", "sft_dev.jsonl"):
        for line in (shared_data / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += [row[k] for k in ("text", "response", "prompt") if isinstance(row.get(k), str)]
    sources = ["web", "code"] * (len(texts) // 2) + ["web"] * (len(texts) % 2)  # a source the step skips too
    table = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts, "source": sources})
    every = QualityStep(QualityConfig.model_validate({**overrides, "measure": "all"})).apply(table)
    lazy = QualityStep(QualityConfig.model_validate({**overrides, "measure": "until_dropped"})).apply(table)
    assert lazy.kept.equals(every.kept)  # the same kept rows, rewritten texts and signals
    assert every.dropped.num_rows > 50 and every.kept.num_rows > 50
    rule_signal = {r.name: r.signal for r in quality_rules(QualityConfig.model_validate(overrides))}

    def stage(signal: str) -> int:  # the order rule sets are measured in
        return (0 if signal.startswith("rep_") and "gram" not in signal else 1 if signal.startswith("rep_")
                else 2 if signal.startswith("gopher_") else 3 if signal.startswith("c4_") else 4)

    late = [n for n in every.dropped.column_names if n.startswith(("rep_", "gopher_", "c4_", "fw_")) and stage(n) in (1, 3, 4)]
    failed_at = [stage(rule_signal[r]) for r in every.dropped.column("rule").to_pylist()]
    for name in every.dropped.column_names:
        a, b = every.dropped.column(name).to_pylist(), lazy.dropped.column(name).to_pylist()
        if name not in late:
            assert a == b, name  # same rows, rules, values, thresholds and every signal measured first
            continue
        # a later set's signal: measured alike, or null on a row an earlier set dropped
        assert all(y == x or (y is None and f < stage(name)) for x, y, f in zip(a, b, failed_at)), name
    # ... and work was skipped: measured values that the lazy run never computed
    skipped = {name: sum(x is not None and y is None for x, y in zip(every.dropped.column(name).to_pylist(),
                                                                     lazy.dropped.column(name).to_pylist()))
               for name in late}
    assert sum(skipped.values()) > 20 and skipped.get("rep_dup_5gram_char_frac", 1) > 0
