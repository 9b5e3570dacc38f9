"""The tokenizer stage with `library: hf`, then the tokenize stage: the stored tokenizer.json, the
manifest's library and ids, and token files that decode to the documents."""

import json

import numpy as np

from llm import storage
from llm.config import TokenizeConfig, TokenizerConfig
from llm.data.dataset import read_manifest
from llm.tokenizer.tokenize import run_tokenize
from llm.executor import LocalExecutor
from llm.tokenizer import load_tokenizer
from llm.tokenizer.stage import run_tokenizer_training, tokenizer_uri
from tests.unit.data.test_stages import make_docs_dataset


def test_hf_tokenizer_stage_then_tokenize(tmp_path):
    ex = LocalExecutor()
    docs, tok_dir, tokens = (str(tmp_path / n) for n in ("docs", "tok", "tokens"))
    make_docs_dataset(docs)
    cfg = TokenizerConfig(library="hf", model_type="bpe", vocab_size=400, sample_bytes=20000,
                          pad_id=3, eos_id=0, user_tokens=["[MASK]"])
    result = run_tokenizer_training(docs, tok_dir, cfg, ex)
    assert result["library"] == "hf" and result["model"].startswith("hf-") and result["model"].endswith(".json")
    assert result["special_tokens"] == {"pad": 3, "unk": 1, "bos": 2, "eos": 0}
    assert set(read_manifest(tok_dir)["files"]) == {"model", "card", "card_md"}
    tok = load_tokenizer(tokenizer_uri(tok_dir))
    assert tok.library == "hf" and json.loads(tok.model_bytes)["model"]["type"] == "BPE"

    meta = run_tokenize(docs, tok_dir, tokens, TokenizeConfig(val_fraction=0.2, test_fraction=0.2), ex)["tokens"]
    assert (meta["bos_id"], meta["eos_id"], meta["pad_id"], meta["dtype"]) == (2, 0, 3, "uint16")
    decoded = []
    for split, entries in meta["splits"].items():
        for e in entries:
            ids = np.fromfile(tmp_path / "tokens" / e["bin"], dtype=np.uint16)
            idx = np.fromfile(tmp_path / "tokens" / e["idx"], dtype="<i8")
            assert idx[-1] == len(ids) == e["tokens"]
            assert (ids[idx[:-1]] == 2).all() and (ids[idx[1:] - 1] == 0).all()
            decoded += [tok.decode(ids[a + 1:b - 1]) for a, b in zip(idx[:-1], idx[1:])]
            if split != "train":
                counts = np.fromfile(tmp_path / "tokens" / e["token_bytes"], dtype="<u2")
                assert int(counts.sum()) == e["text_bytes"]
    texts = [t for s in read_manifest(docs)["shards"]
             for t in storage.read_parquet(str(tmp_path / "docs" / s["files"]["data"]), columns=["text"])
             .column("text").to_pylist()]
    assert sorted(decoded) == sorted(texts)  # byte-level BPE: every document decodes back exactly


def test_an_hf_tokenizer_exports_as_its_own_tokenizer_json(tmp_path, shared_data):
    from transformers import PreTrainedTokenizerFast

    from llm.export.hf_tokenizer import tokenizer_files
    from llm.tokenizer.hf import train_hf
    from llm.tokenizer.base import tokenizer_from_bytes

    texts = [json.loads(line)["text"] for line in (shared_data / "langid_dev.jsonl").open(encoding="utf-8")]
    tok = tokenizer_from_bytes(train_hf(texts[::2], 600, "bpe", {"pad": 3, "eos": 0, "unk": 1, "bos": 2}, ["<|user|>"]))
    for name, data in tokenizer_files(tok).items():
        (tmp_path / name).write_bytes(data)
    wrapped = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert (wrapped.pad_token_id, wrapped.eos_token_id, wrapped.bos_token_id, wrapped.unk_token_id) == (3, 0, 2, 1)
    for text in texts[1::2] + ["<s>text</s> <|user|>"]:
        assert wrapped.encode(text, add_special_tokens=False) == tok.encode(text), text
