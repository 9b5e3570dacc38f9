"""Fixtures for training tests: a tiny, learnable token dataset on local disk."""

import pytest

from llm.train.data import write_token_dataset
from tests.unit.train.tiny import VOCAB, counting_docs


@pytest.fixture
def tokens_uri(tmp_path) -> str:
    uri = str(tmp_path / "tokens")
    val = counting_docs(40, 1)
    # Made-up bytes of text per token (bos/eos none), as the tokenize stage records them for validation.
    val_bytes = [[0, *[1 + t % 3 for t in doc[1:-1]], 0] for doc in val]
    write_token_dataset(uri, {"train": counting_docs(200, 0), "val": val}, vocab_size=VOCAB,
                        token_bytes={"val": val_bytes})
    return uri
