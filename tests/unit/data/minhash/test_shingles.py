import numpy as np

from llm.data.minhash.shingles import char_shingles, jaccard, token_spans, tokens, word_shingles


def test_tokens_ignore_case_and_punctuation_and_split_cjk_per_character():
    assert tokens("Hello, World!  It's") == ["hello", "world", "it", "s"]
    assert tokens("机器学习 is fun") == ["机", "器", "学", "习", "is", "fun"]
    assert tokens("ภาษาไทย") == list("ภาษาไทย")


def test_reformatted_copy_has_the_same_shingles_and_an_edit_lowers_jaccard_exactly():
    text = "the quick brown fox jumps over the lazy dog and runs far away into the woods"
    b = word_shingles([text, text.upper().replace(" ", "  \n"), text.replace("lazy", "sleepy")], 5)
    assert np.array_equal(b.of(0), b.of(1))
    # 12 five-word shingles; replacing one word changes the 5 that contain it: 7 shared of 17
    assert b.counts[0] == 12 and jaccard(b.of(0), b.of(2)) == 7 / 17


def test_short_and_empty_documents():
    b = word_shingles(["two words", "", "..."], 5)
    assert b.counts.tolist() == [1, 0, 0]  # a short text is one shingle; no words, no shingles


def test_char_shingles_and_cjk_word_shingles_match_partial_overlap():
    c = char_shingles(["abcdef", "abcdeg"], 3)
    assert jaccard(c.of(0), c.of(1)) == 3 / 5
    w = word_shingles(["我们今天去公园散步吧", "我们今天去公园跑步吧"], 3)
    assert 0 < jaccard(w.of(0), w.of(1)) < 1


def test_shingles_do_not_depend_on_batching():
    texts = [f"document {i} " + "word " * (i % 7) + "end of text here" for i in range(50)]
    whole = word_shingles(texts, 3)
    for i in range(50):
        assert np.array_equal(whole.of(i), word_shingles([texts[i]], 3).of(0))


def test_compiled_tokenizer_finds_the_regex_tokens_on_real_multilingual_text(shared_data):
    import json

    texts = []
    for name in ("langid_dev.jsonl", "mail_dev.jsonl", "html_dev.jsonl"):
        for line in open(shared_data / name, encoding="utf-8"):
            texts += [v for v in json.loads(line).values() if isinstance(v, str)]
    texts += ["x" * 70 + " İstanbul ÉCOLE straße", "", "...", "a_b", "ǅemal Ⅻ ½ ٣"]
    spans = token_spans(texts)
    assert len(texts) > 3000
    assert spans.strings() == [tokens(t) for t in texts]
    # one hash per distinct token, and the same hash in every batch
    words = [w for doc in spans.strings() for w in doc]
    assert len(set(zip(words, spans.hashes.tolist()))) == len(set(words)) == len(set(spans.hashes.tolist()))
    tail = token_spans(texts[-5:])
    assert np.array_equal(tail.hashes, spans.hashes[-len(tail.hashes):])


def test_unvalidated_bytes_never_read_past_a_document():
    import pyarrow as pa

    # "ab" + a truncated 3-byte sequence | a stray continuation byte + "cd" | a lead byte claiming 4 bytes
    data = b"ab\xe2\x82" + b"\x80cd" + b"\xf4"
    offsets = np.array([0, 4, 7, 8], np.int32)
    texts = pa.Array.from_buffers(pa.string(), 3, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)])
    assert token_spans(texts).strings() == [["ab"], ["cd"], []]


def test_the_saved_code_point_tables_are_the_ones_built_from_python():
    from llm.data.minhash import shingles

    shingles._tables.cache_clear()
    saved = shingles._tables()  # read from the installation's saved file (written by the first process)
    assert shingles._TABLES_FILE.is_file()
    lower, expand_from, expand_to = shingles._build_lower_table()
    assert np.array_equal(saved["classes"], shingles._build_char_classes())
    assert np.array_equal(saved["lower"], lower) and np.array_equal(saved["expand_from"], expand_from)
    assert np.array_equal(saved["expand_to"], expand_to) and len(expand_from) >= 1  # U+0130
