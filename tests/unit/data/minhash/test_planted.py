"""The distinct real-text corpus with planted word edits: bases cut once from distinct texts, copies
made at known rates, and the planted truth checked by brute force."""

from __future__ import annotations

from collections import Counter

from llm.data.minhash.planted import EDITS, _edit_words, distinct_corpus, real_texts, similar_pairs, slices
from llm.data.minhash.shingles import word_shingles


def test_slices_never_overlap_and_cover_each_text_once():
    texts = [("a", [f"a{i}" for i in range(95)]), ("b", [f"b{i}" for i in range(40)])]
    pieces = slices(texts, 30, 15)
    # Last pieces shorter than 15 words (a@90: 5, b@30: 10) are left out.
    assert [s for s, _ in pieces] == ["a@0", "a@30", "a@60", "b@0"]
    words = [w for _, ws in pieces for w in ws]
    assert len(words) == len(set(words))  # no word of a text is in two slices


def test_real_texts_are_distinct(shared_data):
    texts = real_texts(shared_data)
    joined = [" ".join(ws) for _, ws in texts]
    assert len(joined) == len(set(joined))
    assert {s.split("/")[0].split(":")[0] for s, _ in texts} >= {"books", "papers", "html_dev.jsonl",
                                                                  "mail_dev.jsonl", "news", "sft_dev.jsonl"}


def test_edit_rates_are_the_drawn_ones():
    import numpy as np

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(20000)]
    vocab = [f"v{i}" for i in range(1000)]
    subbed = _edit_words(words, rng, vocab, 0.1, 0, 0)
    assert len(subbed) == len(words) and abs(sum(w.startswith("v") for w in subbed) / len(words) - 0.1) < 0.01
    assert abs(len(_edit_words(words, rng, vocab, 0, 0.1, 0)) / len(words) - 0.9) < 0.01
    assert abs(len(_edit_words(words, rng, vocab, 0, 0, 0.1)) / len(words) - 1.1) < 0.01


def test_distinct_corpus_families_and_truth(shared_data):
    corpus = distinct_corpus(shared_data, 1200, seed=3)
    n = len(corpus.texts)
    assert 1100 <= n <= 1300
    assert len({len(corpus.family), len(corpus.kind), len(corpus.rate), len(corpus.source)}) == 1
    bases = [s for s, k in zip(corpus.source, corpus.kind) if k == "base"]
    assert len(bases) == len(set(bases)) == len(set(corpus.family))  # each slice used once, one base a family
    assert set(corpus.kind) <= {"base", *EDITS} and Counter(corpus.kind)["base"] / n > 0.5
    assert all(0 <= r <= 0.15 for r in corpus.rate)
    pairs = similar_pairs(word_shingles(corpus.texts, 5), 0.8)
    in_family = [p for p in pairs if corpus.family[p[0]] == corpus.family[p[1]]]
    assert len(in_family) > 100
    # Across families only where the real texts themselves repeat (quoted mail, shared templates): rare.
    assert len(pairs) - len(in_family) <= 0.02 * len(in_family)
