"""Both libraries behind one interface: each of the six library/model-type pairs trained on real
multilingual text keeps special tokens whole, honours configured special ids, round-trips text where
the model is lossless, and counts bytes per token exactly."""

import json

import numpy as np
import pytest
from pydantic import ValidationError

from llm.config import TokenizerConfig
from llm.tokenizer.base import tokenizer_from_bytes
from llm.tokenizer.hf import train_hf
from llm.tokenizer.stage import train_tokenizer
from llm.tokenizer.token_bytes import TokenByteCounter

PAIRS = [("sentencepiece", "bpe"), ("sentencepiece", "unigram"), ("sentencepiece", "char"),
         ("hf", "bpe"), ("hf", "wordpiece"), ("hf", "unigram")]
IDS = {"pad_id": 3, "unk_id": 1, "bos_id": 2, "eos_id": 0}
USER = ["[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def texts(shared_data) -> list[str]:
    records = [json.loads(line) for line in (shared_data / "langid_dev.jsonl").open(encoding="utf-8")]
    assert len({r["label"] for r in records}) >= 13
    return [r["text"] for r in records]


def _config(library, model_type, **extra) -> TokenizerConfig:
    user = [] if model_type == "wordpiece" else USER  # wordpiece has them as its own tokens
    return TokenizerConfig(library=library, model_type=model_type, vocab_size=800, character_coverage=0.995,
                           user_tokens=user, **IDS, **extra)


@pytest.fixture(scope="module")
def trained(texts):
    return {pair: tokenizer_from_bytes(train_tokenizer(texts[:300], _config(*pair))) for pair in PAIRS}


@pytest.mark.parametrize("pair", PAIRS, ids="-".join)
def test_configured_ids_and_special_tokens_kept_whole(trained, pair):
    tok = trained[pair]
    assert tok.library == pair[0]
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (3, 1, 2, 0)
    roles = ["[CLS]", "[SEP]"] if pair[1] == "wordpiece" else []  # bos and eos there: read as text, below
    for marker in [m for m in ["<|user|>", "<|end|>", "[CLS]", "[SEP]", "[MASK]"] if m not in roles]:
        token = tok.piece_id(marker)
        assert token is not None and marker in tok.special_ids()
        text = f"so{marker}we go {marker} end"
        ids = tok.encode(text)
        assert ids.count(token) == 2, (marker, [tok.id_to_piece(i) for i in ids])
        assert tok.decode(ids).count(marker) == 2
        if pair[1] != "wordpiece":  # wordpiece puts spaces around it, see train_hf
            assert tok.decode(ids) == text
    # The roles typed in a text are text, as SentencePiece reads them: bos/eos are added by id only.
    roles = [tok.id_to_piece(i) for i in (tok.bos_id, tok.eos_id)]
    assert not {tok.bos_id, tok.eos_id} & set(tok.encode(" ".join(roles)))


@pytest.mark.parametrize("pair", [("sentencepiece", "bpe"), ("hf", "bpe")], ids="-".join)
def test_lossless_models_round_trip_every_text(trained, texts, pair):
    tok = trained[pair]
    extra = ["😀 emoji 🎉🇩🇪", "𠀀𪚥 rare CJK", "\ttab\r\n\nnewlines\n", "  two  spaces  ", "<s>not bos</s>"]
    for text in texts + extra:
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("pair", PAIRS, ids="-".join)
def test_byte_counts_sum_exactly_on_multilingual_text(trained, texts, pair):
    tok = trained[pair]
    docs = texts + [" leading space, naïve café", "\ttab\r\n\nnewlines\n", "a [CLS] b <|end|>", "😀 🎉"]
    ids = tok.encode_batch(docs)
    counts = TokenByteCounter(tok).counts_batch(docs, ids)
    assert [int(c.sum()) for c in counts] == [len(d.encode("utf-8")) for d in docs]
    assert all(len(c) == len(i) and (c >= 0).all() for c, i in zip(counts, ids))


@pytest.mark.parametrize("pair", [p for p in PAIRS if p[0] == "hf"], ids="-".join)
def test_hf_batch_encoding_is_the_encoding_of_each_text(trained, texts, pair):
    tok = trained[pair]  # encode_batch skips the offsets; the ids are those of encoding with them
    docs = texts[:50] + ["<s>not bos</s>", "a [CLS] b <|end|>", "\ttab\r\n\nnewlines\n", "😀 🎉", ""]
    assert tok.encode_batch(docs) == [tok.encode(d) for d in docs]
    assert tok.encode_batch(docs) == [e.ids for e in tok.tk.encode_batch(docs, add_special_tokens=False)]


@pytest.mark.parametrize("model_type", ["bpe", "wordpiece", "unigram"])
def test_hf_training_is_deterministic(texts, model_type):
    first, second = (train_hf(texts[:200], 600, model_type, special_tokens=["<|user|>"]) for _ in range(2))
    assert first == second


def test_wordpiece_is_bert_style(trained):
    tok = trained[("hf", "wordpiece")]
    assert [tok.id_to_piece(i) for i in range(5)] == ["[SEP]", "[UNK]", "[CLS]", "[PAD]", "[MASK]"]
    pieces = [tok.id_to_piece(i) for i in tok.encode("Unterschiedlichkeiten")]
    assert len(pieces) > 1 and all(p.startswith("##") for p in pieces[1:])


@pytest.mark.parametrize("fields, named", [
    ({"library": "hf", "model_type": "char"}, "model_type"),
    ({"library": "sentencepiece", "model_type": "wordpiece"}, "model_type"),
    ({"library": "hf", "pad_id": 4}, "pad_id"),
    ({"bos_id": 0}, "bos_id"),
    ({"user_tokens": ["<s>"]}, "user_tokens"),
    ({"library": "hf", "model_type": "wordpiece", "user_tokens": ["[CLS]"]}, "user_tokens"),
    ({"user_tokens": ["<|user|>"]}, "user_tokens"),
])
def test_bad_config_names_the_field(fields, named):
    with pytest.raises(ValidationError, match=named):
        TokenizerConfig(**fields)


def test_a_user_token_spelled_as_another_roles_token_is_only_a_user_token(texts):
    tok = tokenizer_from_bytes(train_hf(texts[:100], 400, "wordpiece", special_tokens=["<s>"]))
    assert tok.id_to_piece(tok.bos_id) == "[CLS]"
    assert tok.encode("a <s> b").count(tok.piece_id("<s>")) == 1
