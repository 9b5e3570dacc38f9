"""Token dataset reading and batching: world-size independence, validation windows."""

import json

import numpy as np
import pytest
import torch

from llm.train.data import (
    TokenDataset,
    TrainBatches,
    val_batches,
    val_window_starts,
    write_token_dataset,
)


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    train = [[2, *rng.integers(4, 300, size=int(n)).tolist(), 3] for n in rng.integers(5, 80, size=60)]
    val = [[2, *range(4, 4 + 50), 3] for _ in range(4)]
    uri = str(tmp_path / "tokens")
    write_token_dataset(uri, {"train": train, "val": val}, vocab_size=300)
    return uri, train, val


def test_written_dataset_follows_the_contract(dataset):
    uri, train, _ = dataset
    manifest = json.loads(open(f"{uri}/_manifest.json").read())["tokens"]
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == 300
    part = manifest["splits"]["train"][0]
    flat = [t for d in train for t in d]
    assert part["tokens"] == len(flat) and part["docs"] == len(train)
    assert np.fromfile(f"{uri}/{part['bin']}", dtype="<u2").tolist() == flat
    idx = np.fromfile(f"{uri}/{part['idx']}", dtype="<i8")
    assert idx[0] == 0 and idx[-1] == len(flat) and len(idx) == len(train) + 1
    split = TokenDataset(uri).split("train")
    assert len(split) == len(flat) and split.num_docs == len(train)
    assert split.window(10, 20).tolist() == flat[10:30]


def test_windows_span_part_boundaries(tmp_path):
    uri = str(tmp_path / "t")
    write_token_dataset(uri, {"train": [[5, 6, 7]], "val": [[8]]}, vocab_size=70000)  # uint32 path
    # add a second part by hand, as the tokenize stage writes several
    (tmp_path / "t" / "train" / "part-00001.bin").write_bytes(np.array([9, 10, 11], dtype="<u4").tobytes())
    (tmp_path / "t" / "train" / "part-00001.idx").write_bytes(np.array([0, 3], dtype="<i8").tobytes())
    m = json.loads((tmp_path / "t" / "_manifest.json").read_text())
    m["tokens"]["splits"]["train"].append({"bin": "train/part-00001.bin", "idx": "train/part-00001.idx", "tokens": 3, "docs": 1})
    (tmp_path / "t" / "_manifest.json").write_text(json.dumps(m))
    split = TokenDataset(uri).split("train")
    assert len(split) == 6
    assert split.window(1, 4).tolist() == [6, 7, 9, 10]
    with pytest.raises(IndexError):
        split.window(3, 4)


def _global_batch(split, world, micro, batch, step):
    rows = []
    for rank in range(world):
        loader = TrainBatches(split, context_length=16, batch_size=batch, micro_batch_size=micro, seed=7, rank=rank, world_size=world)
        for x, y in loader.micro_batches(step):
            assert x.shape == (micro, 16) and y.shape == (micro, 16)
            assert torch.equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one
            rows.append(torch.cat([x, y[:, -1:]], dim=1))
    return torch.cat(rows)


def test_global_batch_is_independent_of_world_size_and_accumulation(dataset):
    split = TokenDataset(dataset[0]).split("train")
    reference = _global_batch(split, world=1, micro=8, batch=8, step=5)
    for world, micro in [(1, 2), (2, 4), (2, 1), (4, 2), (8, 1)]:
        assert torch.equal(_global_batch(split, world, micro, 8, step=5), reference), (world, micro)
    assert not torch.equal(_global_batch(split, 1, 8, 8, step=6), reference)  # steps differ


def test_batch_size_must_divide(dataset):
    split = TokenDataset(dataset[0]).split("train")
    with pytest.raises(ValueError, match="multiple"):
        TrainBatches(split, 16, batch_size=6, micro_batch_size=4, seed=0)


def test_val_windows_are_contiguous_deterministic_and_shared_by_ranks(dataset):
    uri, _, val = dataset
    split = TokenDataset(uri).split("val")
    flat = [t for d in val for t in d]  # 4 x 52 = 208 tokens
    starts = val_window_starts(len(split), 16, max_windows=100)
    assert starts.tolist() == [16 * k for k in range((208 - 1) // 16)]
    batches = list(val_batches(split, 16, batch_size=4, num_batches=3))
    assert [b[0].shape[0] for b in batches] == [4, 4, 4]
    x0, y0 = batches[0]
    assert x0[1].tolist() == flat[16:32] and y0[1].tolist() == flat[17:33]
    # two ranks together see exactly the batches one rank sees
    split_two = [list(val_batches(split, 16, 4, 3, rank=r, world_size=2)) for r in range(2)]
    assert len(split_two[0]) == 2 and len(split_two[1]) == 1
    assert torch.equal(split_two[1][0][0], batches[1][0])
    # asking for more than the split holds gives the windows there are, the last batch shorter
    assert sum(b[0].shape[0] for b in val_batches(split, 16, 5, 10)) == len(starts)
