"""Token files for other tools, read back by those tools themselves (datatrove's folder dataset,
megatron-core's IndexedDataset): every document's ids equal what the project's loader reads, for a
uint16 vocabulary (written by the tokenize stage) and a uint32 one (`llmpipe export-tokens`)."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from llm.config import TokenizeConfig
from llm.errors import UserError
from llm.tokenizer.token_formats import export_tokens, si_count
from llm.train.data import write_token_dataset
from tests.unit.data.multilingual_tokens import tokenize_multilingual
from tests.unit.tokenizer.token_readers import (datatrove_documents, megatron_documents, part_documents,
                                                project_documents)

FORMATS = ["datatrove", "megatron"]


@pytest.fixture(scope="module")
def staged(tmp_path_factory, shared_data):
    """A token dataset of real multilingual text (vocabulary 1000, uint16) with both formats."""
    root = tmp_path_factory.mktemp("token-formats")
    cfg = TokenizeConfig(val_fraction=0.2, test_fraction=0.2, formats=FORMATS)
    texts, manifest = tokenize_multilingual(root, shared_data, cfg, shards=3)
    return root / "tokens", manifest


def test_stage_writes_datatrove_and_megatron_files_the_tools_read_back(staged):
    out, manifest = staged
    assert manifest["tokens"]["dtype"] == "uint16" and manifest["tokens"]["formats"] == FORMATS
    for split in ("train", "val", "test"):
        ours = project_documents(str(out), split)
        assert len(ours) > 50
        # The folder dataset reads files in sorted path order: the parts sorted by their names (shard keys).
        parts = sorted(manifest["tokens"]["splits"][split], key=lambda e: e["formats"]["datatrove"]["ds"])
        expected = part_documents(str(out), parts, "<u2")
        assert sorted(expected) == sorted(ours)
        assert datatrove_documents(str(out / "datatrove" / split), token_size=2) == expected
        megatron = []
        for entry in manifest["tokens"]["splits"][split]:
            megatron += megatron_documents(str(out / entry["formats"]["megatron"]["bin"][:-len(".bin")]))
        assert megatron == ours


def test_stage_lists_the_format_files_in_its_shards_and_writes_datatrove_metadata(staged):
    out, manifest = staged
    shard = manifest["shards"][0]
    for split, entry in shard["extra"]["splits"].items():
        for fmt, roles in entry["formats"].items():
            for role, rel in roles.items():
                assert shard["files"][f"{split}_{fmt}_{role}"] == rel and (out / rel).is_file()
        meta = (out / entry["formats"]["datatrove"]["ds_metadata"]).read_text().split("\n")
        assert meta[0] == f"llmpipe-tokenizer@{manifest['parents']['tokenizer']['version']}|2"
        assert int(meta[1]) == entry["tokens"] and meta[2] == si_count(entry["tokens"], "T")


def test_si_count_matches_datatrove_metadata_units():
    humanize = pytest.importorskip("humanize")  # what datatrove's own writer formats the count with
    for n in (0, 7, 12, 999, 1000, 1234, 65_432, 1_234_567, 9_876_543_210):
        assert si_count(n, "T") == humanize.metric(n, unit="T"), n


@pytest.fixture(scope="module")
def wide(staged, tmp_path_factory):
    """The staged documents with ids moved above 65535: a uint32 token dataset of the same real text."""
    out, _ = staged
    uri = str(tmp_path_factory.mktemp("wide") / "tokens")
    splits = {s: [[t + 69_000 for t in doc] for doc in project_documents(str(out), s)] for s in ("train", "val")}
    write_token_dataset(uri, splits, vocab_size=70_000)
    return uri


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_command_writes_uint32_vocabularies_the_tools_read_back(wide, tmp_path, fmt, capsys):
    dest = tmp_path / fmt
    assert main(["export-tokens", wide, str(dest), "--format", fmt]) == 0
    assert "train:" in capsys.readouterr().out
    for split in ("train", "val"):
        ours = project_documents(wide, split)
        assert min(min(d) for d in ours) > 65_535
        if fmt == "datatrove":
            assert datatrove_documents(str(dest / split), token_size=4) == ours
            assert np.fromfile(dest / split / "part-00000.ds.index", dtype="<u8")[-1] == sum(map(len, ours))
        else:
            assert megatron_documents(str(dest / split / "part-00000")) == ours


def test_export_of_one_split_and_bad_names(wide, tmp_path):
    report = export_tokens(wide, str(tmp_path / "one"), "megatron", ["val"])
    assert list(report["splits"]) == ["val"] and not (tmp_path / "one" / "train").exists()
    assert Counter(megatron_documents(str(tmp_path / "one" / "val" / "part-00000"))) == \
        Counter(project_documents(wide, "val"))
    with pytest.raises(UserError, match="no split 'test'"):
        export_tokens(wide, str(tmp_path / "two"), "datatrove", ["test"])
    with pytest.raises(ValueError, match="unknown token file format 'arrow'"):
        export_tokens(wide, str(tmp_path / "three"), "arrow")
    with pytest.raises(UserError, match="no token dataset manifest"):
        export_tokens(str(Path(wide).parent / "missing"), str(tmp_path / "four"), "datatrove")
