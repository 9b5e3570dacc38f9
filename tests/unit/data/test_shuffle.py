"""The global shuffle of the training split (`tokenize.shuffle`) over real multilingual text: every
document exactly once, in an order across shards, the same bytes for the same seed whatever runs the
tasks, exact counts, and the exported formats in the shuffled order."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from llm import versions
from llm.config import TokenizeConfig
from llm.tokenizer.shuffle import bucket_count
from llm.tokenizer.tokenize import run_tokenize
from llm.executor import LocalExecutor
from llm.tokenizer.token_formats import export_tokens
from tests.unit.data.multilingual_tokens import tokenize_multilingual
from tests.unit.tokenizer.token_readers import (datatrove_documents, megatron_documents, part_documents,
                                                project_documents)

# About 4 KiB of tokens per bucket: the training split (~30 KiB) is cut into several buckets.
CFG = dict(val_fraction=0.2, test_fraction=0.2, shuffle=True, shuffle_seed=7, shuffle_bucket_bytes=4096)


class ReversedExecutor:
    """Runs the items last to first (another schedule than LocalExecutor's), results in input order."""

    def map(self, fn, items, desc=""):
        return list(reversed([fn(item) for item in reversed(items)]))


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("shuffle")
    _, manifest = tokenize_multilingual(root, shared_data, TokenizeConfig(**CFG, formats=["datatrove", "megatron"]),
                                        shards=3)
    return root, manifest


def _shuffled_docs(root: Path, manifest: dict) -> list[tuple[int, ...]]:
    return part_documents(str(root / "tokens"), manifest["tokens"]["shuffled"]["parts"], "<u2")


def test_every_training_document_lands_once_in_an_order_across_shards(shuffled):
    root, manifest = shuffled
    section, tokens = manifest["tokens"]["shuffled"], manifest["tokens"]
    before = project_documents(str(root / "tokens"), "train")
    after = _shuffled_docs(root, manifest)
    assert Counter(after) == Counter(before) and len(before) > 200
    assert after != before
    assert section["buckets"] == bucket_count(tokens["totals"]["train"] * 2, 4096) >= 4
    assert section["tokens"] == tokens["totals"]["train"] == sum(e["tokens"] for e in section["parts"])
    assert section["docs"] == len(before) == sum(e["docs"] for e in section["parts"])
    # Global, not per shard: the first shuffled part holds documents of every input shard.
    shard_of = {}
    for i, entry in enumerate(tokens["splits"]["train"]):
        for doc in part_documents(str(root / "tokens"), [entry], "<u2"):
            shard_of[doc] = i
    first = part_documents(str(root / "tokens"), section["parts"][:1], "<u2")
    assert {shard_of[d] for d in first} == set(range(len(tokens["splits"]["train"])))
    # The project's own training split is kept as it was, one part per shard.
    assert len(tokens["splits"]["train"]) == 3


def test_same_seed_gives_identical_bytes_whatever_runs_the_tasks_and_another_seed_another_order(shuffled):
    root, manifest = shuffled
    again = run_tokenize(str(root / "docs"), str(root / "tok"), str(root / "again"),
                         TokenizeConfig(**CFG, formats=["datatrove", "megatron"]), ReversedExecutor())
    for ours, theirs in zip(manifest["tokens"]["shuffled"]["parts"], again["tokens"]["shuffled"]["parts"]):
        for key in ("bin", "idx"):
            assert (root / "tokens" / ours[key]).read_bytes() == (root / "again" / theirs[key]).read_bytes()
        assert ours["sha256"] == theirs["sha256"]
    other = run_tokenize(str(root / "docs"), str(root / "tok"), str(root / "other"),
                         TokenizeConfig(**{**CFG, "shuffle_seed": 8}), LocalExecutor())
    other_docs = part_documents(str(root / "other"), other["tokens"]["shuffled"]["parts"], "<u2")
    seven = _shuffled_docs(root, manifest)
    assert Counter(other_docs) == Counter(seven) and other_docs != seven


def test_formats_write_the_shuffled_order_and_the_version_keeps_its_files(shuffled, tmp_path):
    root, manifest = shuffled
    out = root / "tokens"
    after = _shuffled_docs(root, manifest)
    assert datatrove_documents(str(out / "datatrove" / "train"), token_size=2) == after
    megatron = []
    for entry in manifest["tokens"]["shuffled"]["parts"]:
        megatron += megatron_documents(str(out / entry["formats"]["megatron"]["bin"][:-len(".bin")]))
    assert megatron == after
    # Per shard, only the unshuffled splits get other formats; the pieces of the scatter are gone.
    assert all("formats" not in e for e in manifest["tokens"]["splits"]["train"])
    assert all("formats" in e for e in manifest["tokens"]["splits"]["val"])
    assert not list(out.glob("shuffled/*/pieces"))
    needed = versions.referenced(manifest)
    assert f"shuffled/{manifest['tokens']['shuffled']['key']}/_done.json" in needed
    for entry in manifest["tokens"]["shuffled"]["parts"]:
        assert {entry["bin"], entry["idx"], *entry["formats"]["datatrove"].values()} <= needed
    # The export command writes the shuffled order too.
    export_tokens(str(out), str(tmp_path / "mg"), "megatron", ["train"])
    exported = []
    for i in range(len(manifest["tokens"]["shuffled"]["parts"])):
        exported += megatron_documents(str(tmp_path / "mg" / "train" / f"part-{i:05d}"))
    assert exported == after


def test_bucket_count_keeps_each_bucket_within_the_budget():
    assert bucket_count(0, 100) == 1 and bucket_count(100, 100) == 1 and bucket_count(101, 100) == 2
    assert TokenizeConfig().shuffle is False and TokenizeConfig().formats == []
    with pytest.raises(ValueError, match="shuffle_bucket_bytes"):
        TokenizeConfig(shuffle_bucket_bytes=10)
    with pytest.raises(ValueError, match="formats"):
        TokenizeConfig(formats=["arrow"])
    assert np.random.PCG64  # the RNG the module's orders are drawn from
