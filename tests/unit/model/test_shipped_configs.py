"""The shipped large configs build the model they claim: shapes and parameter counts checked against
the closed form, on the meta device (no memory is allocated for the weights)."""

from pathlib import Path

import pytest
import torch

from llm.config import load_config
from llm.model.gpt import GPT

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def closed_form_params(layers: int, d: int, vocab: int, context: int) -> int:
    # per block: qkv 3d^2 + attention out d^2 + MLP 2 x 4d^2 = 12 d^2, two bias-free LayerNorms 2d;
    # tied token embedding V d, learned positions T d, final LayerNorm d
    return layers * (12 * d * d + 2 * d) + vocab * d + context * d + d


@pytest.mark.parametrize("name, expected_millions", [("seed-24x1024.yaml", 354.6), ("gpt2-small.yaml", 124.3)])
def test_large_configs_shape_and_parameter_count(name, expected_millions):
    cfg = load_config(CONFIGS / name)
    m = cfg.model
    with torch.device("meta"):
        model = GPT(m)
    assert len(model.blocks) == m.layers
    assert tuple(model.wte.weight.shape) == (m.vocab_size, m.hidden_size)
    assert tuple(model.wpe.weight.shape) == (m.context_length, m.hidden_size)
    assert model.blocks[0].attn.head_size * m.attention_heads == m.hidden_size
    n = model.num_params()
    assert n == closed_form_params(m.layers, m.hidden_size, m.vocab_size, m.context_length)
    assert round(n / 1e6, 1) == expected_millions
