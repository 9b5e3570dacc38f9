"""Learning-rate schedule: linear warmup, then cosine, linear, step or no decay down to a floor."""

from __future__ import annotations

import math

from llm.config import TrainConfig


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Warmup rises linearly over the first `warmup_steps` steps, step s at `peak * (s + 1) / warmup_steps`,
    so the last warmup step is at the peak; the decay then goes from the peak to `min_lr_ratio * peak`
    at `max_steps` and stays there (step decay: multiplied by `step_decay_factor` every
    `step_decay_every` steps, clamped at the floor). With `min_lr_ratio = 0` and cosine decay this is
    `get_learning_rate` of the source text from `warmup_steps` on, and that formula one step later
    during warmup; the floor (a tenth of the peak by default, as in Chinchilla) keeps late steps learning.
    """
    peak = cfg.learning_rate
    if step < cfg.warmup_steps:
        # Not `peak * step / warmup_steps`: a rate of 0 at step 0 would waste that step's batch and
        # still move Adam's moment estimates.
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.decay == "constant":
        return peak
    floor = cfg.min_lr_ratio * peak
    span = cfg.max_steps - cfg.warmup_steps
    # Past max_steps (or with no room left for decay) the schedule holds at the floor instead of
    # letting the cosine climb back up.
    progress = 1.0 if span <= 0 else min((step - cfg.warmup_steps) / span, 1.0)
    if cfg.decay == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.decay == "step":
        # Discrete drops every `step_decay_every` steps after warmup, never below the floor.
        drops = (min(step, cfg.max_steps) - cfg.warmup_steps) // cfg.step_decay_every
        return max(floor, peak * cfg.step_decay_factor**drops)
    return floor + (peak - floor) * (1.0 - progress)
