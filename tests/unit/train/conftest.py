"""Fixtures for training tests: a tiny, learnable token dataset on local disk."""

import pytest

from llm.train.data import write_token_dataset
from tests.unit.train.tiny import VOCAB, counting_docs


@pytest.fixture
def tokens_uri(tmp_path) -> str:
    uri = str(tmp_path / "tokens")
    write_token_dataset(uri, {"train": counting_docs(200, 0), "val": counting_docs(40, 1)}, vocab_size=VOCAB)
    return uri
