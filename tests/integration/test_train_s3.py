"""Token data read from and checkpoints written to an S3 endpoint (moto_server on 127.0.0.1)."""

import pytest

from llm import storage
from llm.train.checkpoint import load_model
from llm.train.data import TokenDataset, write_token_dataset
from llm.train.loop import checkpoint_to, train
from tests.unit.train.tiny import VOCAB, counting_docs, tiny_model, tiny_train

pytestmark = pytest.mark.integration


def test_train_from_s3_tokens_to_s3_checkpoint(s3_endpoint, tmp_path, monkeypatch):
    """`s3_endpoint` (tests/integration/conftest.py): moto_server with bucket `llmpipe-test`."""
    monkeypatch.setenv("LLMPIPE_TOKEN_CACHE", str(tmp_path / "cache"))
    bucket = "s3://llmpipe-test"
    tokens = f"{bucket}/tokens"
    write_token_dataset(tokens, {"train": counting_docs(100, 0), "val": counting_docs(20, 1)}, vocab_size=VOCAB)
    split = TokenDataset(tokens).split("train")
    assert len(split) == sum(len(d) for d in counting_docs(100, 0))
    assert list((tmp_path / "cache").rglob("part-00000.bin"))  # parts were copied to the local cache

    ckpt = f"{bucket}/run/final"
    summary = train(tiny_model(), tiny_train(max_steps=10, eval_every=10, checkpoint_every=10), tokens,
                    report=checkpoint_to(ckpt))
    assert storage.exists(f"{ckpt}/state.json") and storage.exists(f"{ckpt}/model.pt")
    model, state = load_model(ckpt)
    assert state["step"] == 10 and state["val_loss"] == pytest.approx(summary.final_val_loss)
    assert model.cfg.vocab_size == VOCAB
