"""The global shuffle as Ray tasks (two schedules) gives the in-process run's bytes, and the shuffle and
the token-file formats work on an S3 endpoint (moto_server on 127.0.0.1)."""

from __future__ import annotations

from collections import Counter

import pytest

from llm import storage
from llm.config import TokenizeConfig
from llm.tokenizer.tokenize import run_tokenize
from llm.executor import LocalExecutor, RayExecutor
from llm.tokenizer.token_formats import export_tokens
from tests.unit.data.multilingual_tokens import tokenize_multilingual
from tests.unit.tokenizer.token_readers import datatrove_documents, part_documents

pytestmark = pytest.mark.integration

CFG = TokenizeConfig(val_fraction=0.2, test_fraction=0.2, shuffle=True, shuffle_seed=3, shuffle_bucket_bytes=4096,
                     formats=["datatrove"])


def _part_bytes(root: str, manifest: dict) -> list[bytes]:
    return [storage.read_bytes(storage.join(root, e[k])) for e in manifest["tokens"]["shuffled"]["parts"]
            for k in ("bin", "idx")]


def test_ray_schedules_match_the_local_shuffle(tmp_path, shared_data, ray_local):
    _, local = tokenize_multilingual(tmp_path, shared_data, CFG, shards=4)
    expected = _part_bytes(str(tmp_path / "tokens"), local)
    assert len(expected) >= 8
    for per_cpu in (1, 8):  # a few long tasks, then one task per item
        out = str(tmp_path / f"ray-{per_cpu}")
        made = run_tokenize(str(tmp_path / "docs"), str(tmp_path / "tok"), out, CFG, RayExecutor(tasks_per_cpu=per_cpu))
        assert _part_bytes(out, made) == expected


def test_shuffle_and_export_on_s3(tmp_path, shared_data, s3_endpoint):
    """`s3_endpoint` (tests/integration/conftest.py): moto_server with bucket `llmpipe-test`."""
    _, local = tokenize_multilingual(tmp_path, shared_data, CFG, shards=3)
    uri = "s3://llmpipe-test/tokens"
    remote = run_tokenize(str(tmp_path / "docs"), str(tmp_path / "tok"), uri, CFG, LocalExecutor())
    assert _part_bytes(uri, remote) == _part_bytes(str(tmp_path / "tokens"), local)
    assert not storage.list_files(f"{uri}/shuffled/{remote['tokens']['shuffled']['key']}/pieces")
    export_tokens(uri, str(tmp_path / "dt"), "datatrove", ["train"])
    shuffled = part_documents(str(tmp_path / "tokens"), local["tokens"]["shuffled"]["parts"], "<u2")
    assert datatrove_documents(str(tmp_path / "dt" / "train"), token_size=2) == shuffled
    assert Counter(shuffled) == Counter(part_documents(str(tmp_path / "tokens"), local["tokens"]["splits"]["train"],
                                                       "<u2"))
