"""Learning-rate schedule against the source text's get_learning_rate."""

import math

import pytest

from llm.config import TrainConfig
from llm.train.schedule import learning_rate


def get_learning_rate(step, warmup_steps, max_steps, max_lr):
    """Verbatim from the source text."""
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    else:
        progress = (step - warmup_steps) / (max_steps - warmup_steps)
        return max_lr * 0.5 * (1 + math.cos(math.pi * progress))


def cfg(**kw) -> TrainConfig:
    base = dict(learning_rate=1e-4, warmup_steps=100, max_steps=1000, min_lr_ratio=0.0, decay="cosine",
                num_workers=1, batch_size=8, micro_batch_size=8)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("step", [0, 1, 50, 99, 100, 101, 250, 550, 999, 1000])
def test_matches_the_source_formula_without_a_floor(step):
    c = cfg()
    # During warmup the rate is the source formula's one step later (step 0 is not wasted at 0).
    source_step = step + 1 if step < 100 else step
    assert learning_rate(step, c) == pytest.approx(get_learning_rate(source_step, 100, 1000, 1e-4), rel=1e-12, abs=1e-18)


def test_warmup_is_linear_from_the_first_step_to_peak():
    c = cfg(min_lr_ratio=0.1)
    assert learning_rate(0, c) == pytest.approx(1e-6)  # peak / warmup_steps: the first step learns
    assert learning_rate(24, c) == pytest.approx(0.25e-4)
    assert learning_rate(99, c) == pytest.approx(1e-4)  # the last warmup step is at the peak
    assert learning_rate(100, c) == pytest.approx(1e-4)
    rates = [learning_rate(s, c) for s in range(100)]
    assert all(b > a for a, b in zip(rates, rates[1:]))


def test_floor_is_reached_at_max_steps_and_held_after():
    c = cfg(min_lr_ratio=0.1)
    assert learning_rate(1000, c) == pytest.approx(1e-5)
    assert learning_rate(5000, c) == pytest.approx(1e-5)
    # halfway through the cosine: halfway between peak and floor
    assert learning_rate(550, c) == pytest.approx(1e-5 + 0.5 * 0.9e-4)
    assert min(learning_rate(s, c) for s in range(100, 1200)) >= 1e-5 - 1e-15


def test_linear_and_constant_decay():
    lin = cfg(decay="linear", min_lr_ratio=0.1)
    assert learning_rate(550, lin) == pytest.approx(1e-5 + 0.5 * 0.9e-4)
    assert learning_rate(325, lin) == pytest.approx(1e-5 + 0.75 * 0.9e-4)
    const = cfg(decay="constant", min_lr_ratio=0.1)
    assert learning_rate(49, const) == pytest.approx(0.5e-4)
    assert learning_rate(900, const) == pytest.approx(1e-4)


def test_no_warmup_and_warmup_covering_the_run():
    assert learning_rate(0, cfg(warmup_steps=0)) == pytest.approx(1e-4)
    whole = cfg(warmup_steps=1000, min_lr_ratio=0.1)
    assert learning_rate(499, whole) == pytest.approx(0.5e-4)
    assert learning_rate(1000, whole) == pytest.approx(1e-5)  # no room to decay: straight to the floor


def test_step_decay_drops_by_the_factor_and_stops_at_the_floor():
    c = cfg(decay="step", step_decay_every=200, step_decay_factor=0.5, min_lr_ratio=0.1)
    assert learning_rate(49, c) == pytest.approx(0.5e-4)  # warmup as for every decay
    assert learning_rate(100, c) == pytest.approx(1e-4)
    assert learning_rate(299, c) == pytest.approx(1e-4)
    assert learning_rate(300, c) == pytest.approx(0.5e-4)
    assert learning_rate(500, c) == pytest.approx(0.25e-4)
    assert learning_rate(900, c) == pytest.approx(1e-5)  # 1e-4 / 16 is below the floor of 1e-5
    assert learning_rate(5000, c) == pytest.approx(1e-5)


@pytest.mark.parametrize("decay", ["cosine", "linear", "step", "constant"])
def test_every_decay_starts_at_the_peak_after_warmup_and_never_rises(decay):
    c = cfg(decay=decay, min_lr_ratio=0.1, step_decay_every=100)
    rates = [learning_rate(s, c) for s in range(100, 1300)]
    assert rates[0] == pytest.approx(1e-4)
    assert all(b <= a + 1e-18 for a, b in zip(rates, rates[1:]))
    assert min(rates) >= (1e-5 if decay != "constant" else 1e-4) - 1e-15
