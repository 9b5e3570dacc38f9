"""The plain GPT model: shapes, causality, parameter accounting, generation."""

import pytest
import torch

from llm.config import ModelConfig
from llm.model import GPT


def tiny(**overrides) -> ModelConfig:
    base = dict(layers=2, hidden_size=32, attention_heads=4, vocab_size=50, context_length=16, mlp_ratio=4.0)
    base.update(overrides)
    return ModelConfig(**base)


def expected_params(cfg: ModelConfig) -> int:
    d, v, t, L = cfg.hidden_size, cfg.vocab_size, cfg.context_length, cfg.layers
    h = int(cfg.mlp_ratio * d)
    b = 1 if cfg.bias else 0
    attn = d * 3 * d + b * 3 * d + d * d + b * d
    mlp = d * h + b * h + h * d + b * d
    norms = 2 * (d + b * d)
    block = attn + mlp + norms
    head = 0 if cfg.tie_embeddings else v * d
    return v * d + t * d + L * block + (d + b * d) + head


def test_forward_shapes_and_loss():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 50, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 50)
    assert loss is None
    targets = torch.randint(0, 50, (3, 10))
    logits, loss = model(idx, targets)
    assert loss.shape == ()
    # Fresh GPT-2 init predicts close to uniform: loss near ln(vocab).
    assert abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.3


def test_rejects_missing_vocab_and_long_input():
    with pytest.raises(ValueError, match="vocab_size"):
        GPT(tiny(vocab_size=None))
    model = GPT(tiny())
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_causal_masking_future_tokens_do_not_change_earlier_logits():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 50, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 50
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tie", [False, True])
def test_param_count_formula(bias, tie):
    cfg = tiny(bias=bias, tie_embeddings=tie)
    model = GPT(cfg)
    assert model.num_params() == expected_params(cfg)
    d = cfg.hidden_size
    embeddings = cfg.vocab_size * d + cfg.context_length * d
    assert model.num_params(exclude_embeddings=True) == expected_params(cfg) - embeddings
    # tied: the output projection is the token table, one tensor
    assert (model.lm_head.weight is model.wte.weight) == tie


def test_flops_per_token_formula():
    cfg = tiny()
    model = GPT(cfg)
    n = model.num_params(exclude_embeddings=True) + cfg.vocab_size * cfg.hidden_size
    attn = 12 * cfg.layers * cfg.attention_heads * (cfg.hidden_size // cfg.attention_heads) * cfg.context_length
    assert model.flops_per_token() == 6 * n + attn


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    cfg = tiny(layers=8, hidden_size=128)
    model = GPT(cfg)
    proj_std = torch.cat([b.mlp.proj.weight.flatten() for b in model.blocks]).std().item()
    fc_std = torch.cat([b.mlp.fc.weight.flatten() for b in model.blocks]).std().item()
    assert abs(fc_std - 0.02) < 0.002
    assert abs(proj_std - 0.02 / (2 * cfg.layers) ** 0.5) < 0.001
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) == 8


def test_generate_is_reproducible_with_a_seeded_generator():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    prompt = torch.tensor([[2, 5, 6]])
    a = model.generate(prompt, 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(1))
    c = model.generate(prompt, 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(2))
    assert a.shape == (1, 23)
    assert torch.equal(a[:, :3], prompt)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Past the context length generation keeps going on a cropped window.
    long = model.generate(prompt, 30, temperature=0.0)
    assert long.shape == (1, 33)
    # Greedy is the argmax of the last position.
    greedy = model.generate(prompt, 1, temperature=0.0)
    assert greedy[0, -1].item() == model(prompt)[0][0, -1].argmax().item()


def test_untargeted_positions_skip_the_head_with_the_same_loss_and_gradients():
    """Positions whose target is -100 are left out of the output projection: same loss, same gradients
    as computing every position's logits and ignoring them in the loss."""
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 50, (3, 10))
    targets = torch.randint(0, 50, (3, 10))
    targets[:, :4] = -100  # a prompt
    targets[2, 7:] = -100  # padding
    logits, loss = model(idx, targets)
    assert logits.shape == (int((targets != -100).sum()), 50)
    loss.backward()
    selected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    full, _ = model(idx)
    reference = torch.nn.functional.cross_entropy(full.view(-1, 50), targets.view(-1), ignore_index=-100)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-7)
    for name, p in model.named_parameters():
        torch.testing.assert_close(selected[name], p.grad, rtol=1e-5, atol=1e-7, msg=name)
    # Nothing to learn from: a zero loss, and the backward still runs.
    model.zero_grad()
    _, zero = model(idx, torch.full_like(targets, -100))
    zero.backward()
    assert zero.item() == 0.0
