"""Step health and early stopping: decisions only, the loop acts on them.

`StepGuard` flags a step whose loss or gradient norm is NaN/inf, or whose loss jumps above
`spike_factor` times the mean of the recent good steps; after `rollback_after` bad steps in a row it
asks for a rollback. An fp16 overflow is not a bad step: GradScaler skips it and lowers its loss
scale, so it is only counted. `EarlyStopping` is the source text's class, on validation loss.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

Verdict = Literal["ok", "skip", "rollback"]


@dataclass
class StepGuard:
    """Judge each optimizer step from its (global) loss and gradient norm."""

    spike_factor: float = 0.0
    rollback_after: int = 0
    #: Good steps needed before spikes are judged (the reference is the mean of the last 20 good steps).
    min_history: int = 5
    bad_in_a_row: int = 0
    skipped: int = 0
    rollbacks: int = 0
    #: fp16 overflow steps (GradScaler skipped them); not counted in `skipped`.
    overflows: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=20))

    def check(self, loss: float, grad_norm: float, overflow: bool = False) -> Verdict:
        """"ok" (apply the step), "skip" (drop its gradients) or "rollback" (restore the last checkpoint).

        `overflow`: the scaled fp16 gradients overflowed. GradScaler drops such a step itself; it says
        nothing about the data or the weights (the scale was too high), so it is counted in `overflows`
        and leaves the bad-step count and the spike reference as they were.
        """
        if overflow:
            self.overflows += 1
            return "ok"
        bad = not (math.isfinite(loss) and math.isfinite(grad_norm))
        if not bad and self.spike_factor > 0 and len(self.recent) >= self.min_history:
            bad = loss > self.spike_factor * (sum(self.recent) / len(self.recent))
        if not bad:
            self.bad_in_a_row = 0
            self.recent.append(loss)
            return "ok"
        self.skipped += 1
        self.bad_in_a_row += 1
        if self.rollback_after and self.bad_in_a_row >= self.rollback_after:
            self.bad_in_a_row = 0
            self.rollbacks += 1
            return "rollback"
        return "skip"


class EarlyStopping:
    """Stop when validation loss has not improved by `min_delta` for `patience` evaluations (source text)."""

    def __init__(self, patience: int = 5, min_delta: float = 0.001):
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss = float("inf")
        self.counter = 0

    def __call__(self, val_loss: float) -> bool:
        if val_loss < self.best_loss - self.min_delta:
            self.best_loss = val_loss
            self.counter = 0
        else:
            self.counter += 1
        return self.counter >= self.patience

    @property
    def improved(self) -> bool:
        """Whether the last call set a new best."""
        return self.counter == 0
