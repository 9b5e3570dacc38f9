"""`train.compile`: torch.compile applied from outside the model gives the same training as eager."""

import pytest
import torch

from llm.train.loop import train
from tests.unit.train.tiny import tiny_model, tiny_train


def _compile_available() -> str | None:
    """None when torch.compile can build a CPU kernel here, else the reason it cannot."""
    try:
        fn = torch.compile(lambda x: torch.sin(x) * 2)
        fn(torch.ones(4))
    except Exception as exc:  # no C++ compiler, unsupported platform, ...
        return f"torch.compile unavailable on this build: {type(exc).__name__}: {exc}"[:300]
    return None


def test_compiled_training_matches_eager(tokens_uri):
    reason = _compile_available()
    if reason:
        pytest.skip(reason)
    torch._dynamo.reset()
    cfg = dict(max_steps=6, eval_every=6, log_every=1, eval_batches=2, checkpoint_every=6)
    eager = train(tiny_model(), tiny_train(**cfg), tokens_uri)
    compiled = train(tiny_model(), tiny_train(compile=True, **cfg), tokens_uri)
    # Compiled kernels fuse and reorder fp32 arithmetic: equal to rounding, not bit for bit. 1e-4 relative
    # is ~1000x fp32 epsilon, far below the loss's change between steps (~1e-1 here).
    assert [h["step"] for h in compiled.history] == [h["step"] for h in eager.history] == list(range(1, 7))
    for ours, ref in zip(compiled.history, eager.history):
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-4)
    assert compiled.final_val_loss == pytest.approx(eager.final_val_loss, rel=1e-4)
    # The run really was compiled: dynamo captured at least one graph.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
