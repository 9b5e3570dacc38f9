"""The compiled quality signals equal their definitions (`signal_patterns`: Arrow splits and RE2
patterns), on the real text of the development data and on random strings of the characters where the
rules have corners (punctuation runs, ASCII and Unicode spaces, citations, case that lowers to ASCII)."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from llm.config import QualityConfig
from llm.data import signal_patterns as sp
from llm.data import textsignals as ts
from llm.data.quality import signals_and_text
from llm.data.repetition_kernels import ngram_repetition
from llm.data.text_classes import ARROW_SPACE, ARROW_SPACES, _all_code_points, build_classes, classes

# Characters and pieces the rules treat specially; a random string of them hits the corners.
PIECES = (list("ab.,;!?()[]{}'\"-…•#%: \t\n\n\n\r\x0b\x0c\x00\x07\x1c")
          + ["\u00a0", "\u2003", "\u3000", "\u0085", "\u200b", "\u2028", "é", "中", "😀", "$", "+", "«", "»", "“", "”",
             "...", "\n\n", " - ", "[1]", "[]", "[edit]", "[citation needed]", "lorem ipsum", "LOREM IPSUM",
             "JavaScript", "Terms of use", "PRIVACY POLICY", "uses cookies", "\u0130", "\u212a", "?!", ")", "12"])

CONFIGS = {
    "default": {},
    "no line removal": {"c4": {"remove_lines": False}},
    "c4 terminal rule": {"c4": {"terminal_punct_lines": True}},
    "loose c4": {"c4": {"min_words_per_line": 0, "max_word_length": 3, "javascript_lines": False,
                        "policy_lines": False, "terminal_punct_lines": True}, "fineweb": {"short_line_chars": 5}},
    "one-word lines": {"c4": {"min_words_per_line": 1}},
}


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 14))) for _ in range(n)]


@pytest.fixture(scope="module")
def real_texts(shared_data) -> list[str]:
    texts: list[str] = []
    for name in ("html_dev.jsonl", "mail_dev.jsonl", "langid_dev.jsonl", "sft_dev.jsonl"):
        for line in (shared_data / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            texts += [row[k] for k in ("text", "rst_source", "response", "prompt") if isinstance(row.get(k), str)]
    texts += [p.read_text(encoding="utf-8", errors="replace") for p in sorted((shared_data / "books").glob("*.txt"))[:3]]
    return texts


def _batches(texts: list[str], size: int = 256):
    for i in range(0, len(texts), size):
        yield pa.array(texts[i:i + size], pa.string())


def test_words_are_the_patterns_tokens(real_texts) -> None:
    texts = real_texts + _random_texts(8000)
    for batch in _batches(texts, 2000):
        fast, slow = ts.words(batch), sp.words_by_patterns(batch)
        assert fast.values.to_pylist() == slow.values.to_pylist()
        assert np.array_equal(fast.parent, slow.parent)
        assert np.array_equal(fast.lengths(), slow.lengths())
        assert np.array_equal(fast.is_word, slow.matches(sp._NOT_PUNCT))
        assert np.array_equal(fast.has_letter, slow.matches(sp._HAS_LETTER))
        assert np.array_equal(ts.word_counts(batch), np.bincount(slow.parent, minlength=len(batch)))


def test_punctuation_corners_of_the_tokenizer() -> None:
    words = ts.words(pa.array(["...", "((a", "a.b.", "end.\u00a0x", "\u00a0..", "x ... y"]))
    by_doc = [[v for v, p in zip(words.values.to_pylist(), words.parent) if p == d] for d in range(6)]
    # RE2's greedy runs: a run of punctuation alone gives up its last character; a no-break space is
    # \S to RE2 but whitespace to the split.
    assert by_doc == [[".", ".", "."], ["(", "(", "a"], ["a.b", "."], ["end.", "x"], [".."], ["x", ".", ".", ".", "y"]]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_signals_and_rewritten_text_are_the_definitions(real_texts, name) -> None:
    cfg = QualityConfig.model_validate(CONFIGS[name])
    texts = real_texts[::3] + _random_texts(6000, seed=len(name))
    for batch in _batches(texts):
        fast, fast_text = signals_and_text(batch, cfg)
        slow, slow_text = sp.signals_by_patterns(batch, cfg)
        assert fast.keys() == slow.keys()
        for key in fast:
            assert np.array_equal(fast[key], slow[key], equal_nan=True), key
        assert (fast_text is None) == (slow_text is None)
        if fast_text is not None:
            assert fast_text.to_pylist() == slow_text.to_pylist()


def test_every_signal_fires_in_the_comparison(real_texts) -> None:
    """The equality above means something only if the texts move every signal."""
    cfg = QualityConfig()
    values, _ = signals_and_text(pa.array(real_texts + _random_texts(3000)), cfg)
    flat = [k for k, v in values.items() if np.nanmax(v) == np.nanmin(v)]
    assert flat == []


def _ngram_reference(tokens: list[str], n: int) -> tuple[int, int]:
    """(most frequent n-gram's characters x count, earliest on ties; characters of words covered by a
    repeat of an earlier n-gram), straight from the definition."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0, 0
    counts: dict[tuple, int] = {}
    for g in grams:
        counts[g] = counts.get(g, 0) + 1
    best = max(range(len(grams)), key=lambda i: (counts[grams[i]], -i))
    top = (sum(map(len, grams[best])) + n - 1) * counts[grams[best]]
    covered, seen = set(), set()
    for i, g in enumerate(grams):
        if g in seen:
            covered.update(range(i, i + n))
        seen.add(g)
    return top, sum(len(tokens[i]) for i in covered)


def test_ngram_kernel_matches_the_definition_on_repetitive_text() -> None:
    rng = random.Random(3)
    docs = [[rng.choice("ab") * rng.randint(1, 3) for _ in range(rng.randint(0, 60))] for _ in range(300)]
    vocab = {w: k + 1 for k, w in enumerate(sorted({w for d in docs for w in d}))}
    codes = np.array([vocab[w] for d in docs for w in d], np.uint64)
    lengths = np.array([len(w) for d in docs for w in d], np.int64)
    starts = np.cumsum([0] + [len(d) for d in docs]).astype(np.int64)
    ns = np.arange(1, 11, dtype=np.int64)
    top = np.zeros((len(ns), len(docs)), np.int64)
    dup = np.zeros((len(ns), len(docs)), np.int64)
    ngram_repetition(starts, codes, lengths, ns, ns, top, dup)
    for d, tokens in enumerate(docs):
        for k, n in enumerate(ns):
            assert (top[k, d], dup[k, d]) == _ngram_reference(tokens, int(n)), (d, n)


def test_class_table_matches_arrow() -> None:
    table = classes()
    assert np.array_equal(table, build_classes())
    chars, cps = _all_code_points()
    arrow_space = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(chars)), 0).to_numpy(zero_copy_only=False)
    assert set(cps[arrow_space].tolist()) == set(ARROW_SPACES)
    assert set(np.flatnonzero(table & ARROW_SPACE).tolist()) == set(ARROW_SPACES)


def test_runs_of_a_batch_give_the_batch_signals(real_texts, monkeypatch) -> None:
    """A large batch is measured in runs of about `_RUN_BYTES`; the values and rewritten texts are
    those of measuring it whole."""
    import llm.data.quality as quality
    from llm.data.quality import QualityStep

    docs = pa.table({"id": [str(i) for i in range(300)], "text": real_texts[:300], "source": ["web"] * 300})
    whole = QualityStep(QualityConfig()).apply(docs)
    monkeypatch.setattr(quality, "_RUN_BYTES", 5000)
    runs = QualityStep(QualityConfig()).apply(docs)
    assert runs.kept.equals(whole.kept) and runs.dropped.equals(whole.dropped)
    assert whole.kept.num_rows and whole.dropped.num_rows
