"""Prefix tuning on a tiny GPT: only the prefix trains, gradients survive activation checkpointing,
dropping the reparametrisation keeps the forward, packed rows stay separate, state dicts round-trip."""

import pickle

import pytest
import torch

from llm.config import ModelConfig
from llm.model import GPT
from llm.model.peft import (
    PrefixKV,
    apply_prefix,
    drop_prefix_reparam,
    load_peft_state_dict,
    peft_state_dict,
    trainable_counts,
)
from llm.model.peft.prefix import prefix_mask
from llm.train.parallel.sharding import apply_activation_checkpointing
from tests.unit.model.grads import assert_grads_only_on_trainable, one_adamw_step

LAYERS, WIDTH, HEADS, VOCAB, P, HIDDEN = 2, 32, 4, 64, 3, 8
KEY_VALUE_NAMES = {f"blocks.{i}.attn.prefix.{kv}" for i in range(LAYERS) for kv in ("key", "value")}


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(layers=LAYERS, hidden_size=WIDTH, attention_heads=HEADS, vocab_size=VOCAB, context_length=16)
    return GPT(cfg)


def prefixed(reparam_hidden: int = 0) -> GPT:
    model = tiny_gpt()
    apply_prefix(model, virtual_tokens=P, reparam_hidden=reparam_hidden)
    return model


def tokens(seed: int = 1, batch: int = 2, seq: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, seq), generator=g)


def enlarge(model: GPT) -> None:
    """Make the prefix large enough to move the logits clearly (a fresh one barely does)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, PrefixKV):
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape, generator=g))


def trainable_names(model: GPT) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("reparam_hidden", [0, HIDDEN])
def test_only_prefix_parameters_train_and_count(reparam_hidden):
    model = prefixed(reparam_hidden)
    assert trainable_names(model) == set(peft_state_dict(model))
    assert all(".attn.prefix." in n for n in trainable_names(model))
    trainable, total = trainable_counts(model)
    d = WIDTH
    if reparam_hidden:
        # Per layer: embedding (P, d), then d -> hidden -> 2d with biases.
        per_layer = P * d + (d * HIDDEN + HIDDEN) + (HIDDEN * 2 * d + 2 * d)
    else:
        per_layer = 2 * P * d
    assert trainable == LAYERS * per_layer
    assert total == tiny_gpt().num_params() + trainable


def test_prefix_names_and_shapes():
    model = prefixed()
    state = peft_state_dict(model)
    assert set(state) == KEY_VALUE_NAMES
    assert all(t.shape == (HEADS, P, WIDTH // HEADS) for t in state.values())


@pytest.mark.parametrize("reparam_hidden", [0, HIDDEN])
def test_one_step_leaves_base_bitwise_unchanged(reparam_hidden):
    model = prefixed(reparam_hidden)
    names = trainable_names(model)
    before, after = one_adamw_step(model, tokens())
    for name, old in before.items():
        if name in names:
            assert not torch.equal(after[name], old), name
        else:
            assert torch.equal(after[name], old), name
            assert after[name].grad is None, name


@pytest.mark.parametrize("reparam_hidden", [0, HIDDEN])
def test_gradients_reach_prefix_under_activation_checkpointing(reparam_hidden):
    # The frozen embeddings give the blocks an input that needs no grad; the prefix parameters are
    # used only inside the checkpointed blocks and must still get their gradients.
    model = prefixed(reparam_hidden)
    apply_activation_checkpointing(model, 1)
    idx = tokens()
    _, loss = model(idx, idx)
    loss.backward()
    assert_grads_only_on_trainable(model)


def test_drop_reparam_keeps_forward_and_leaves_key_value():
    model = prefixed(HIDDEN).eval()
    enlarge(model)
    idx = tokens()
    before = model(idx)[0]
    assert drop_prefix_reparam(model) == LAYERS
    torch.testing.assert_close(model(idx)[0], before, rtol=0, atol=1e-6)
    assert set(peft_state_dict(model)) == KEY_VALUE_NAMES
    assert not any(".mlp.0." in n or "embedding" in n for n in model.state_dict() if ".prefix." in n)
    assert trainable_names(model) == set(peft_state_dict(model))
    assert drop_prefix_reparam(model) == 0


@pytest.mark.parametrize("reparam_hidden", [0, HIDDEN])
def test_peft_state_dict_round_trips(reparam_hidden):
    model = prefixed(reparam_hidden).eval()
    enlarge(model)
    # The same base weights (same seed) but a fresh prefix, so only the load can make them agree.
    fresh = prefixed(reparam_hidden).eval()
    idx = tokens()
    assert not torch.allclose(fresh(idx)[0], model(idx)[0])
    load_peft_state_dict(fresh, peft_state_dict(model))
    assert torch.equal(fresh(idx)[0], model(idx)[0])
    with pytest.raises(ValueError, match="missing"):
        load_peft_state_dict(fresh, {})


def test_reparam_state_does_not_load_into_dropped_prefix():
    model = prefixed(HIDDEN)
    dropped = prefixed(HIDDEN)
    drop_prefix_reparam(dropped)
    with pytest.raises(ValueError, match="unexpected"):
        load_peft_state_dict(dropped, peft_state_dict(model))


def test_prefix_changes_the_output():
    base = tiny_gpt().eval()
    model = prefixed().eval()
    enlarge(model)
    idx = tokens()
    assert not torch.allclose(model(idx)[0], base(idx)[0], atol=1e-3)


def test_prefix_mask_shapes():
    plain = prefix_mask(None, seq=3, virtual_tokens=2, device=torch.device("cpu"))
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(plain, expected[None, None])
    packed = torch.ones(2, 1, 3, 3, dtype=torch.bool).tril()
    with_prefix = prefix_mask(packed, seq=3, virtual_tokens=2, device=torch.device("cpu"))
    assert torch.equal(with_prefix, expected.expand(2, 1, 3, 5))


def test_packed_examples_see_the_prefix_and_not_each_other():
    model = prefixed().eval()
    enlarge(model)
    a, b = tokens(seed=1, batch=1, seq=5), tokens(seed=2, batch=1, seq=7)
    segments = torch.tensor([[0] * 5 + [1] * 7])
    positions = torch.cat((torch.arange(5), torch.arange(7)))[None]
    packed = model(torch.cat((a, b), dim=1), positions=positions, segments=segments)[0]
    other_a = tokens(seed=3, batch=1, seq=5)
    repacked = model(torch.cat((other_a, b), dim=1), positions=positions, segments=segments)[0]
    assert torch.equal(packed[:, 5:], repacked[:, 5:])
    assert not torch.allclose(packed[:, :5], repacked[:, :5])
    torch.testing.assert_close(packed[:, :5], model(a)[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(packed[:, 5:], model(b)[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("reparam_hidden", [0, HIDDEN])
def test_training_lowers_the_loss(reparam_hidden):
    model = prefixed(reparam_hidden)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    idx = tokens(batch=4)
    targets = idx.roll(-1, dims=1)
    losses = []
    for _ in range(30):
        _, loss = model(idx, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # A random base passes little of the prefix on (small output projections, a share of the softmax
    # mass), so the drop is small; that it is steady shows the gradients point the right way.
    assert all(later < earlier for earlier, later in zip(losses, losses[1:]))
    assert losses[-1] < losses[0] - 0.005


def test_bf16_autocast():
    model = prefixed(HIDDEN)
    idx = tokens()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
    assert logits.dtype == torch.bfloat16
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_pickles():
    model = prefixed(HIDDEN).eval()
    idx = tokens()
    copy = pickle.loads(pickle.dumps(model))
    assert torch.equal(copy(idx)[0], model(idx)[0])
    # The copy routes through its own prefix, not the original's.
    enlarge(copy)
    assert not torch.equal(copy(idx)[0], model(idx)[0])


def test_rejects_zero_virtual_tokens_and_applying_twice():
    with pytest.raises(ValueError, match="virtual_tokens"):
        apply_prefix(tiny_gpt(), virtual_tokens=0)
    model = prefixed()
    with pytest.raises(ValueError, match="already"):
        apply_prefix(model, virtual_tokens=P)
