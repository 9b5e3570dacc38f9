"""MFU: FLOPs per token, the device peak table, unavailable on unknown devices, impossible values fail."""

import pytest
import torch

from llm.config import ModelConfig
from llm.model import GPT
from llm.train.mfu import device_peak_flops, mfu, peak_flops_for_name


def test_flops_per_token_is_6n_plus_attention():
    cfg = ModelConfig(layers=2, hidden_size=32, attention_heads=2, context_length=32, vocab_size=64)
    model = GPT(cfg)
    # non-embedding matmul weights: per block qkv 32x96 + proj 32x32 + fc 32x128 + proj 128x32
    per_block = 32 * 96 + 32 * 32 + 32 * 128 + 128 * 32
    norms = 2 * 2 * 32 + 32  # two LayerNorm weights per block + final (no biases)
    n = 2 * per_block + norms + 64 * 32  # + the tied output head
    assert model.flops_per_token() == 6 * n + 12 * 2 * 2 * 16 * 32


@pytest.mark.parametrize(
    ("name", "precision", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H200", "bf16", 989e12),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
        ("NVIDIA A100-SXM4-80GB", "fp32", 19.5e12),
        ("Tesla V100-SXM2-16GB", "bf16", None),  # no bf16 tensor cores
        ("Some Future GPU", "bf16", None),
    ],
)
def test_device_peaks(name, precision, peak):
    assert peak_flops_for_name(name, precision) == peak


def test_cpu_has_no_peak_and_mfu_is_unavailable():
    assert device_peak_flops(torch.device("cpu"), "bf16") is None
    assert mfu(1e9, 1e5, 1, None) is None


def test_mfu_value_and_impossible_values_raise():
    # 1e9 FLOPs/token x 4e5 tokens/s over 2 x 989e12 FLOP/s
    assert mfu(1e9, 4e5, 2, 989e12) == pytest.approx(4e14 / 1.978e15)
    with pytest.raises(ValueError, match="above 100%"):
        mfu(1e9, 2e6, 1, 989e12)


class _Metrics:
    """A run target that keeps what is logged to it."""

    def __init__(self):
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step):
        self.logged.append((step, dict(metrics)))


def test_an_impossible_mfu_warns_once_and_the_run_goes_on(tokens_uri, monkeypatch, caplog):
    import logging

    from llm.train import loop
    from tests.unit.train.tiny import tiny_model, tiny_train

    caplog.set_level(logging.WARNING, logger="llm.train")
    # A peak of 1 FLOP/s: every reading is far above 100%, as with a wrong FLOP count or device table.
    monkeypatch.setattr(loop, "device_peak_flops", lambda device, precision: 1.0)
    target = _Metrics()
    cfg = tiny_train(max_steps=4, log_every=1, eval_every=4, checkpoint_every=4, system_metrics=False)
    summary = loop.train(tiny_model(), cfg, tokens_uri, target)
    assert summary.steps == 4
    warnings = [r.getMessage() for r in caplog.records if "MFU" in r.getMessage()]
    assert len(warnings) == 1 and "above 100%" in warnings[0]
    counts = [m["mfu_implausible"] for _, m in target.logged if "mfu_implausible" in m]
    assert counts == [1, 2, 3, 4]
    assert not any("mfu" in m for _, m in target.logged)  # an impossible value is not logged as the MFU
