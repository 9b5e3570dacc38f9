"""The tokenize stage records the UTF-8 bytes of text behind every token of the scored splits, exactly:
per document they sum to the text's length, per split to the manifest's totals."""

import numpy as np
import pytest

from llm.data import schema
from llm.tokenizer.tokenize import split_of
from llm.tokenizer import load_tokenizer
from llm.tokenizer.stage import tokenizer_uri
from tests.unit.data.multilingual_tokens import tokenize_multilingual


@pytest.fixture(scope="module")
def made(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("tokenize-bytes")
    texts, manifest = tokenize_multilingual(root, shared_data)
    return root / "tokens", texts, manifest["tokens"]


def _split_texts(texts, split):
    return [t for t in texts if split_of(schema.text_hash(t), 0.2, 0.2) == split]


def test_scored_splits_count_each_documents_bytes_exactly(made):
    out, texts, meta = made
    byte_ids = set(load_tokenizer(tokenizer_uri(str(out.parent / "tok"))).byte_fallback_ids().tolist())
    byte_pieces = 0
    for split in ("val", "test"):
        per_doc = []
        for e in meta["splits"][split]:
            counts = np.fromfile(out / e["token_bytes"], dtype="<u2")
            tokens = np.fromfile(out / e["bin"], dtype="<u2")
            idx = np.fromfile(out / e["idx"], dtype="<i8")
            assert len(counts) == len(tokens) == e["tokens"]
            assert (counts[tokens <= 3] == 0).all()  # bos, eos stand for no text
            byte_pieces += sum(int(t) in byte_ids for t in tokens)
            per_doc += [int(counts[a:b].sum()) for a, b in zip(idx[:-1], idx[1:])]
            assert sum(per_doc[-e["docs"]:]) == e["text_bytes"]
        expected = [len(t.encode("utf-8")) for t in _split_texts(texts, split)]
        assert sorted(per_doc) == sorted(expected) and len(expected) > 50
        assert any(len(t.encode("utf-8")) > len(t) for t in _split_texts(texts, split))  # multi-byte text
    assert byte_pieces > 10  # characters left to byte fallback were scored too


def test_every_split_totals_its_text_bytes_and_training_keeps_its_size(made):
    out, texts, meta = made
    for split in ("train", "val", "test"):
        assert meta["text_bytes"][split] == sum(len(t.encode("utf-8")) for t in _split_texts(texts, split))
    assert all("token_bytes" not in e for e in meta["splits"]["train"])
    assert not list((out / "train").glob("*.bytes"))
