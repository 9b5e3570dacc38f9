"""The train / val / test split: a pure function of a document's text hash."""

import numpy as np
import pytest

from llm.config import TokenizeConfig
from llm.data import schema
from llm.tokenizer.tokenize import split_of


def _hashes(n: int) -> list[str]:
    return [schema.text_hash(f"document {i}") for i in range(n)]


def _before(text_hash: str, val_fraction: float) -> str:
    # the two-way rule every earlier token dataset was split by
    return "val" if int(text_hash[:8], 16) / 2**32 < val_fraction else "train"


@pytest.mark.parametrize("val, test", [(0.05, 0.05), (0.1, 0.2), (0.0, 0.1), (0.2, 0.0), (0.3, 0.5)])
def test_three_disjoint_stable_ranges_with_the_configured_shares(val, test):
    hashes = _hashes(20000)
    splits = [split_of(h, val, test) for h in hashes]
    assert set(splits) <= {"train", "val", "test"}
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert share["val"] == pytest.approx(val, abs=0.01)
    assert share["test"] == pytest.approx(test, abs=0.01)
    assert share["train"] == pytest.approx(1 - val - test, abs=0.01)
    # each split is one contiguous range of the hash: val [0, v), test [v, v + t), train the rest
    position = np.array([int(h[:8], 16) / 2**32 for h in hashes])
    for name, lo, hi in [("val", 0, val), ("test", val, val + test), ("train", val + test, 1)]:
        mine = position[[s == name for s in splits]]
        assert ((mine >= lo) & (mine < hi)).all(), name
    assert [split_of(h, val, test) for h in hashes] == splits  # the same every time


def test_existing_val_assignments_do_not_move():
    hashes = _hashes(20000)
    for val in (0.05, 0.1, 0.2):
        for test in (0.0, 0.05, 0.3):
            now = [split_of(h, val, test) for h in hashes]
            old = [_before(h, val) for h in hashes]
            assert [n == "val" for n in now] == [o == "val" for o in old]
            # the test share is taken from what was train, never from val
            assert all(o == "train" for n, o in zip(now, old) if n == "test")
            if test == 0.0:
                assert now == old


def test_config_has_a_test_fraction_and_refuses_shares_past_one():
    cfg = TokenizeConfig()
    assert cfg.test_fraction == 0.05
    assert TokenizeConfig.model_fields["test_fraction"].description
    with pytest.raises(ValueError, match="test_fraction"):
        TokenizeConfig(val_fraction=0.6, test_fraction=0.4)
