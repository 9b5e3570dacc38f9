"""`export --format hf` with the checkpoint, its tokenizer and the output all on S3 (moto on
loopback): the folder comes back whole and loads in transformers with the project's outputs and ids."""

from __future__ import annotations

import pytest
import torch

from llm import storage
from tests.hf_export_setup import perturbed_model, tiny_config, token_ids, train_tokenizer, write_checkpoint

pytestmark = pytest.mark.integration


def test_export_reads_and_writes_s3(s3_endpoint, shared_data, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.export.hf import export_hf
    from llm.tokenizer.base import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    bucket = "s3://llmpipe-test"
    tokenizer = f"{bucket}/tokenizer/spm.model"
    with open(train_tokenizer(tmp_path / "spm.model"), "rb") as f:
        storage.write_bytes(tokenizer, f.read())
    model = perturbed_model(tiny_config(tie_embeddings=False, bias=True))
    write_checkpoint(tmp_path / "ckpt", model, tokenizer)  # records the S3 tokenizer
    storage.replace_dir(str(tmp_path / "ckpt"), f"{bucket}/ckpt")

    written = export_hf(f"{bucket}/ckpt", f"{bucket}/hf")
    assert written["tokenizer"] == tokenizer
    local = tmp_path / "hf"
    storage.download_dir(f"{bucket}/hf", str(local))
    hf_model = AutoModelForCausalLM.from_pretrained(local).eval()
    ids = token_ids(5)
    with torch.no_grad():
        torch.testing.assert_close(hf_model(input_ids=ids).logits, model(ids)[0], rtol=0, atol=1e-4)
    text = "Bonjour, comment ça va ? 你好"
    assert AutoTokenizer.from_pretrained(local).encode(text) == load_tokenizer(tokenizer).encode(text)
