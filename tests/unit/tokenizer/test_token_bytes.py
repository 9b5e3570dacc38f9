"""Bytes of text per token: on real multilingual text (13 languages, byte-fallback emoji and rare CJK)
every document's counts sum to its UTF-8 length, and every clean prefix of tokens to the bytes it
decodes to, so a window cut anywhere counts exactly the bytes its tokens stand for."""

import json

import numpy as np
import pytest

from llm.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece
from llm.tokenizer.token_bytes import TokenByteCounter

# Characters the tokenizer's sample lacks (byte fallback: one piece per byte), whitespace the
# tokenizer keeps (tabs, CRLF, a leading space), and an empty document.
EXTRA = ["😀 emoji 🎉🇩🇪 flags", "𠀀𪚥 rare CJK 龘", " leading space, naïve café", "", "\ttab\r\n\nnewlines\n", "  "]


@pytest.fixture(scope="module")
def texts(shared_data) -> list[str]:
    records = [json.loads(line) for line in (shared_data / "langid_dev.jsonl").open(encoding="utf-8")]
    assert len({r["label"] for r in records}) >= 10
    return [r["text"] for r in records]


def _tokenizer(texts: list[str], **options) -> SentencePieceTokenizer:
    # Trained on every third text at coverage 0.98: rare characters of the rest are left to bytes.
    return SentencePieceTokenizer(train_sentencepiece(texts[::3], vocab_size=600, character_coverage=0.98, **options))


def _no_spans(text, ids):
    raise AssertionError(f"the piece table missed the bytes of {text!r}")


def test_counts_sum_to_the_utf8_length_of_every_document(texts):
    tok = _tokenizer(texts)
    counter = TokenByteCounter(tok)
    counter._surface_counts = _no_spans  # with byte fallback the piece table alone is exact
    docs = texts + EXTRA
    ids = tok.encode_batch(docs)
    counts = counter.counts_batch(docs, ids)
    assert [int(c.sum()) for c in counts] == [len(t.encode("utf-8")) for t in docs]
    assert all(len(c) == len(i) and (c >= 0).all() for c, i in zip(counts, ids))
    pieces = [tok.id_to_piece(t) for d in ids for t in d]
    assert sum(p.startswith("<0x") for p in pieces) > 10  # byte fallback was exercised...
    assert any(ord(ch) > 0xFFFF for t in EXTRA for ch in t)  # ...by characters of four UTF-8 bytes
    assert counter.prefix == 1  # the dummy prefix space, which no document's count includes


def test_every_clean_prefix_counts_the_bytes_it_decodes_to(texts):
    tok = _tokenizer(texts)
    counter = TokenByteCounter(tok)
    checked = 0
    for text in texts[1::25] + EXTRA[:3]:
        ids = tok.encode(text)
        cumulative = np.cumsum(counter.counts(text, ids))
        for k in range(1, len(ids) + 1):
            decoded = tok.decode(ids[:k])
            if "\ufffd" in decoded:  # cut inside a character's bytes: no text to compare with
                continue
            # decode drops the dummy prefix space, as the counts do
            assert cumulative[k - 1] == len(decoded.encode("utf-8")), (text, k)
            checked += 1
    assert checked > 200


def test_without_byte_fallback_unknown_text_is_counted_from_the_encoder_spans(texts):
    tok = _tokenizer(texts, byte_fallback=False)
    counter = TokenByteCounter(tok)
    docs = EXTRA[:2] + texts[:20]
    ids = tok.encode_batch(docs)
    assert any(tok.unk_id in d for d in ids)  # <unk> stands for a whole run of unknown characters
    assert [int(c.sum()) for c in counter.counts_batch(docs, ids)] == [len(t.encode("utf-8")) for t in docs]


def test_ids_of_another_text_are_refused(texts):
    tok = _tokenizer(texts, byte_fallback=False)
    with pytest.raises(ValueError):
        TokenByteCounter(tok).counts("something else 😀", tok.encode("other text 😀"))
