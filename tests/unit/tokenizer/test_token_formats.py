"""Token files for other tools, read back by those tools themselves (datatrove's folder dataset,
megatron-core's IndexedDataset): every document's ids equal what the project's loader reads, for a
uint16 vocabulary (written by the tokenize stage) and a uint32 one (`llmpipe export-tokens`)."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from llm.config import TokenizeConfig
from llm.errors import InputNotFound, UserError
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
    for n in (0, 7, 12, 999, 1000, 1234, 9_996, 65_432, 999_600, 1_234_567, 9_876_543_210):
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
    with pytest.raises(UserError, match="already holds files"):
        export_tokens(wide, str(tmp_path / "one"), "datatrove", ["val"])
    with pytest.raises(UserError, match="no split 'test'"):
        export_tokens(wide, str(tmp_path / "two"), "datatrove", ["test"])
    with pytest.raises(ValueError, match="unknown token file format 'arrow'"):
        export_tokens(wide, str(tmp_path / "three"), "arrow")
    with pytest.raises(InputNotFound, match="no token manifest"):
        export_tokens(str(Path(wide).parent / "missing"), str(tmp_path / "four"), "datatrove")


def test_export_command_reports_a_missing_dataset_in_one_line(tmp_path, capsys):
    assert main(["export-tokens", str(tmp_path / "none"), str(tmp_path / "out"), "--format", "megatron"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no token manifest" in err[0] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype, token_size", [("<u2", 2), ("<u4", 4)])
def test_files_are_byte_identical_to_the_tools_own_writers(staged, tmp_path, dtype, token_size):
    """datatrove's TokenizedFile and megatron-core's IndexedDatasetBuilder, given the same documents,
    write the same bytes (Megatron's widest token type is int32, which it takes for uint32 ids)."""
    import torch
    from datatrove.pipeline.tokens.tokenizer import TokenizedFile
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from llm.tokenizer.token_formats import write_part

    out, manifest = staged
    docs = [[t + (69_000 if token_size == 4 else 0) for t in d] for d in project_documents(str(out), "val")[:40]]
    tokens = np.array([t for d in docs for t in d], dtype=dtype)
    starts = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    ours = tmp_path / "ours"
    write_part(str(ours), "datatrove", "part", tokens, starts, "tok-name")
    write_part(str(ours), "megatron", "part", tokens, starts)

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    ds = TokenizedFile(str(theirs), "part.ds", tokenizer_name_or_path="tok-name", save_final_metadata=True,
                       token_size=token_size)
    for d in docs:
        ds.write(d, None)
    ds.close()
    builder = IndexedDatasetBuilder(str(theirs / "part.bin"), dtype=np.uint16 if token_size == 2 else np.int32)
    for d in docs:
        builder.add_document(torch.tensor(d), [len(d)])
    builder.finalize(str(theirs / "part.idx"))
    for name in ("part.ds", "part.ds.index", "part.ds.metadata", "part.bin", "part.idx"):
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name
