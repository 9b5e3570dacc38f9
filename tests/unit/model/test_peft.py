"""LoRA and bottleneck adapters on a tiny GPT: identity at init, only method params train, merge
round-trips, gradients survive activation checkpointing, counts and method-only state dicts."""

import pytest
import torch

from llm.config import ModelConfig
from llm.model import GPT
from llm.model.peft import (
    Adapter,
    LoRALinear,
    apply_adapters,
    apply_lora,
    load_peft_state_dict,
    lora_linear,
    peft_state_dict,
    trainable_counts,
)
from llm.train.parallel.sharding import apply_activation_checkpointing
from tests.unit.model.grads import assert_grads_only_on_trainable, one_adamw_step

TARGETS = ["qkv", "proj", "fc"]


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(layers=2, hidden_size=32, attention_heads=4, vocab_size=50, context_length=16, mlp_ratio=4.0)
    return GPT(cfg)


def tokens(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (2, 12), generator=g)


def with_method(method: str) -> GPT:
    model = tiny_gpt()
    if method == "lora":
        apply_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=TARGETS)
    else:
        apply_adapters(model, reduction_factor=4)
    return model


def perturb(model: GPT) -> None:
    """Move the zero-initialised halves off zero, so every method parameter affects the output."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)
            elif isinstance(m, Adapter):
                m.up.weight.copy_(torch.randn(m.up.weight.shape, generator=g) * 0.1)


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_output_equals_base_at_init(method):
    base = tiny_gpt().eval()
    model = with_method(method).eval()
    idx = tokens()
    torch.testing.assert_close(model(idx)[0], base(idx)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_one_step_changes_only_method_params(method):
    model = with_method(method)
    method_names = set(peft_state_dict(model))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == method_names
    before, after = one_adamw_step(model, tokens())
    for name, old in before.items():
        if name not in method_names:
            assert torch.equal(after[name], old), name
    assert any(not torch.equal(after[n], before[n]) for n in method_names)


def test_merged_and_unmerged_forward_agree():
    model = with_method("lora").eval()
    perturb(model)
    idx = tokens()
    unmerged = model(idx)[0]
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.merge()
    torch.testing.assert_close(model(idx)[0], unmerged, rtol=0, atol=1e-5)


def two_branch(x, layer: LoRALinear):
    """The textbook LoRA forward: the base layer plus a separate low-rank branch."""
    return torch.nn.functional.linear(x, layer.weight, layer.bias) + (x @ layer.lora_A.t() @ layer.lora_B.t()) * layer.scaling


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("train_weight", [False, True])
def test_fused_lora_matches_two_branch_form_and_gradients(bias, train_weight):
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(24, 40, bias=bias).double(), rank=4, alpha=8.0)
    torch.nn.init.normal_(layer.lora_B)
    layer.weight.requires_grad_(train_weight)
    x = torch.randn(3, 5, 24, dtype=torch.double, requires_grad=True)
    params = [x, layer.lora_A, layer.lora_B] + ([layer.weight] if train_weight else []) + ([layer.bias] if bias else [])
    fused = layer(x)
    ref = two_branch(x, layer)
    torch.testing.assert_close(fused, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(fused, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # And against finite differences, not only against another autograd graph.
    w = layer.weight.detach().requires_grad_(train_weight)
    assert torch.autograd.gradcheck(
        lambda x, a, b: lora_linear(x, w, layer.bias, a, b, layer.scaling), (x, layer.lora_A, layer.lora_B)
    )


def test_fused_lora_leaves_frozen_base_without_gradient():
    layer = LoRALinear(torch.nn.Linear(8, 6), rank=2)
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    layer(torch.randn(4, 8)).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None


def test_lora_dropout_applies_to_the_update_only_in_training():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(16, 16), rank=4, dropout=0.5)
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(6, 16)
    layer.train()
    torch.manual_seed(1)
    a = layer(x)
    torch.manual_seed(2)
    b = layer(x)
    assert not torch.allclose(a, b)  # a fresh dropout mask each call
    layer.eval()
    torch.testing.assert_close(layer(x), two_branch(x, layer), rtol=0, atol=1e-6)


def test_fused_lora_under_bf16_autocast_computes_in_bf16_and_keeps_fp32_grads():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(32, 48), rank=4, alpha=8.0)
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        ref = two_branch(x, layer)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert layer.lora_A.grad.dtype == torch.float32 and layer.lora_B.grad.dtype == torch.float32


def test_merge_then_unmerge_restores_base_weights():
    base = tiny_gpt()
    model = with_method("lora")
    perturb(model)
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    for m in layers:
        m.merge()
    assert not torch.equal(layers[0].weight, base.blocks[0].attn.qkv.weight)
    for m in layers:
        m.unmerge()
    base_params = dict(base.named_parameters())
    for name, p in model.named_parameters():
        if "lora_" not in name:
            torch.testing.assert_close(p, base_params[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_gradients_reach_method_params_under_activation_checkpointing(method):
    # The embeddings are frozen, so the blocks' input does not require grad: a checkpoint that only
    # tracks its inputs would hand back an output with no graph and the method params no gradient.
    model = with_method(method)
    perturb(model)
    apply_activation_checkpointing(model, every=1)
    idx = tokens()
    _, loss = model(idx, idx)
    loss.backward()
    assert_grads_only_on_trainable(model)


def test_lora_trainable_count_matches_formula():
    model = with_method("lora")
    trainable, total = trainable_counts(model)
    d, h, layers, r = 32, 128, 2, 4
    # Per block: qkv (d -> 3d), attn.proj (d -> d), mlp.fc (d -> h), mlp.proj (h -> d).
    expected = layers * r * ((d + 3 * d) + (d + d) + (d + h) + (h + d))
    assert trainable == expected
    assert total == tiny_gpt().num_params() + expected
    # r=4 against width 32 is a large rank for so small a model; the ratio shrinks with the width.
    assert trainable < total / 5


def test_adapter_trainable_count():
    model = with_method("adapter")
    trainable, total = trainable_counts(model)
    d, b = 32, 8
    assert trainable == 2 * 2 * (d * b + b + b * d + d)
    assert trainable < total / 10


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_peft_state_dict_holds_only_method_params_and_round_trips(method):
    model = with_method(method)
    perturb(model)
    state = peft_state_dict(model)
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state) == trainable_names
    assert all(("lora_" in k) if method == "lora" else (".adapter." in k) for k in state)
    fresh = with_method(method)
    load_peft_state_dict(fresh, state)
    idx = tokens()
    torch.testing.assert_close(fresh.eval()(idx)[0], model.eval()(idx)[0])
    with pytest.raises(ValueError, match="missing"):
        load_peft_state_dict(fresh, {})


def test_base_parameter_names_are_unchanged_by_lora():
    base_names = set(tiny_gpt().state_dict())
    model = with_method("lora")
    assert set(model.state_dict()) - set(peft_state_dict(model)) == base_names


def test_apply_lora_rejects_unknown_targets():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="nope") as err:
        apply_lora(model, rank=2, targets=["qkv", "nope"])
    assert "qkv" not in str(err.value)
    # Nothing was changed or frozen.
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_apply_lora_rejects_tied_output_head():
    with pytest.raises(ValueError, match="lm_head"):
        apply_lora(tiny_gpt(), rank=2, targets=["lm_head"])


def test_adapters_cannot_be_applied_twice():
    model = with_method("adapter")
    with pytest.raises(ValueError, match="already"):
        apply_adapters(model, reduction_factor=4)
