"""Activation checkpointing, bad-step handling, early stopping and precision rules of the training step."""

import logging

import pytest
import torch
from pydantic import ValidationError

from llm.config import TrainConfig
from llm.model import GPT
from llm.train.checkpoint import load_model, read_state
from llm.train.guard import EarlyStopping, StepGuard
from llm.train.loop import checkpoint_to, train
from llm.train.parallel.sharding import apply_activation_checkpointing
from tests.unit.train.tiny import VOCAB, tiny_model, tiny_train


def _grads(every: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    # dropout on: recomputation must replay the same masks
    model = GPT(tiny_model().model_copy(update={"vocab_size": VOCAB, "layers": 4, "dropout": 0.1}))
    apply_activation_checkpointing(model, every)
    x = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    _, loss = model(x, x)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("every", [1, 2, 3])
def test_activation_checkpointing_gives_equal_gradients(every):
    plain, ckpt = _grads(0), _grads(every)
    assert plain.keys() == ckpt.keys()  # parameter names unchanged
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_step_guard_skips_bad_steps_and_asks_for_rollback():
    guard = StepGuard(spike_factor=3.0, rollback_after=2, min_history=3)
    assert [guard.check(x, 1.0) for x in (4.0, 3.9, 3.8)] == ["ok"] * 3
    assert guard.check(float("nan"), 1.0) == "skip"
    assert guard.check(3.7, 1.0) == "ok"  # a good step resets the count
    assert guard.check(3.6, float("inf")) == "skip"
    assert guard.check(50.0, 1.0) == "rollback"  # a spike: > 3x the recent mean, second bad in a row
    assert guard.check(11.0, 1.0) == "ok"  # below 3 x mean(4.0, 3.9, 3.8, 3.7) = 11.55
    assert (guard.skipped, guard.rollbacks) == (3, 1)


def test_early_stopping_matches_the_source_class():
    stop = EarlyStopping(patience=2, min_delta=0.01)
    decisions = [stop(v) for v in (3.0, 2.5, 2.495, 2.6, 2.4, 2.395, 2.39)]
    assert decisions == [False, False, False, True, False, False, True]
    assert stop.best_loss == 2.4


def test_repeated_bad_steps_roll_back_to_the_checkpoint_and_lower_the_rate(tokens_uri, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="llm.train")
    # spike_factor 0.5: any loss above half the recent mean is a "spike", so every step after the first
    # five (the spike reference) is bad; the run then must end on the weights of step 5.
    cfg = tiny_train(max_steps=9, checkpoint_every=5, eval_every=9, spike_factor=0.5, rollback_after=2)
    seen = {}

    def keep(metrics, folder):
        if folder is not None:
            checkpoint_to(str(tmp_path / f"step{metrics['step']}"))(metrics, folder)
            seen[metrics["step"]] = True

    from mlflow.tracking import MlflowClient

    from llm.tracking import RunTarget

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.create_run(client.create_experiment("guard", artifact_location=(tmp_path / "artifacts").as_uri()))
    target = RunTarget(tracking_uri=tracking_uri, run_id=run.info.run_id)
    summary = train(tiny_model(), cfg, tokens_uri, target, report=keep)
    assert (summary.skipped_steps, summary.rollbacks) == (4, 2)
    # each bad step is an MLflow event at its step, with the running counts and the rate multiplier
    assert [m.step for m in client.get_metric_history(run.info.run_id, "bad_step")] == [6, 7, 8, 9]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "rollbacks")] == [0, 1, 1, 2]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "lr_scale")] == [1, 0.5, 0.5, 0.25]
    five, _ = load_model(str(tmp_path / "step5"))
    nine, _ = load_model(str(tmp_path / "step9"))
    for k, v in five.state_dict().items():
        torch.testing.assert_close(nine.state_dict()[k], v, atol=0, rtol=0, msg=k)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("rolled back" in m for m in messages) == 2 and any("lr x0.25" in m for m in messages)


def test_early_stopping_keeps_the_best_weights(tokens_uri, tmp_path):
    # min_delta 10 nats: only the first evaluation counts as an improvement, the second stops the run.
    cfg = tiny_train(max_steps=60, eval_every=5, checkpoint_every=60, early_stopping_patience=1,
                     early_stopping_min_delta=10.0)
    summary = train(tiny_model(), cfg, tokens_uri, report=checkpoint_to(str(tmp_path / "final")))
    assert summary.steps == 10
    state = read_state(str(tmp_path / "final"))
    assert state["best_step"] == 5 and state["early_stopped"] is True
    # the saved weights are step 5's: they reproduce the best validation loss, not step 10's
    from llm.train.data import TokenDataset
    from llm.train.validation import validation_loss

    model, _ = load_model(str(tmp_path / "final"))
    val = TokenDataset(tokens_uri).split("val")
    loss, _ = validation_loss(model, val, 32, cfg.micro_batch_size, cfg.eval_batches, torch.device("cpu"))
    assert loss == pytest.approx(state["val_loss"], abs=1e-6)
    assert summary.final_val_loss == pytest.approx(loss, abs=1e-6)


def test_precision_and_strategy_rules_fail_at_load():
    with pytest.raises(ValidationError, match="fp16 needs use_gpu"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValidationError, match="ddp\\+tp is not supported"):
        TrainConfig(strategy="ddp+tp", tensor_parallel=2)
    with pytest.raises(ValidationError, match="tensor_parallel"):
        TrainConfig(strategy="ddp", tensor_parallel=2)
    assert TrainConfig(precision="fp16", use_gpu=True).precision == "fp16"
    # the batch divides over data-parallel ranks only: 4 workers as 2 (dp) x 2 (tp)
    hybrid = TrainConfig(strategy="fsdp+tp", num_workers=4, tensor_parallel=2, batch_size=8, micro_batch_size=2)
    assert (hybrid.data_parallel, hybrid.grad_accum_steps) == (2, 2)
    with pytest.raises(ValidationError, match="at least as many micro-batches"):
        TrainConfig(strategy="pp", num_workers=2, pipeline_parallel=2, batch_size=8, micro_batch_size=8)
    with pytest.raises(ValidationError, match="data-parallel"):
        TrainConfig(strategy="fsdp+tp", num_workers=4, tensor_parallel=2, batch_size=6, micro_batch_size=2)


def test_step_guard_counts_overflows_apart_from_bad_steps():
    guard = StepGuard(spike_factor=3.0, rollback_after=2, min_history=1)
    assert guard.check(4.0, 1.0) == "ok"
    assert guard.check(float("nan"), 1.0) == "skip"
    # fp16 overflows: GradScaler's business; neither bad steps nor a break in a run of bad steps
    assert [guard.check(4.0, float("inf"), overflow=True) for _ in range(3)] == ["ok"] * 3
    assert guard.check(50.0, 1.0) == "rollback"
    assert (guard.skipped, guard.rollbacks, guard.overflows) == (2, 1, 3)


class _Metrics:
    """A run target that keeps what is logged to it."""

    def __init__(self):
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step):
        self.logged.append((step, dict(metrics)))

    def history(self, name):
        return [(step, m[name]) for step, m in self.logged if name in m]


def _fp16_on_cpu(monkeypatch, init_scale: float, **overrides):
    """fp16 autocast with loss scaling on CPU (the config allows fp16 on GPUs only), starting at `init_scale`."""
    import functools

    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=init_scale))
    return tiny_train(system_metrics=False, **overrides).model_copy(update={"precision": "fp16"})


def test_fp16_overflows_are_counted_apart_and_never_roll_back(tokens_uri, monkeypatch):
    # A loss scale of 2^40 overflows fp16 in every step of this run: GradScaler skips each one.
    cfg = _fp16_on_cpu(monkeypatch, 2.0**40, max_steps=6, checkpoint_every=6, eval_every=6, spike_factor=3.0,
                       rollback_after=2)
    target = _Metrics()
    summary = train(tiny_model(), cfg, tokens_uri, target)
    assert summary.overflow_steps == 6
    assert (summary.skipped_steps, summary.rollbacks) == (0, 0)
    assert target.history("overflow_skips") == [(s, float(s)) for s in range(1, 7)]
    assert target.history("bad_step") == []
    # the scale halves at each overflow
    assert [v for _, v in target.history("loss_scale")] == [2.0 ** (40 - s) for s in range(1, 7)]


def test_fp16_bad_steps_still_skip_and_roll_back(tokens_uri, tmp_path, monkeypatch):
    # As test_repeated_bad_steps_roll_back_to_the_checkpoint_and_lower_the_rate, under loss scaling (a
    # scale of 1 never overflows here): every step after the fifth is a spike.
    cfg = _fp16_on_cpu(monkeypatch, 1.0, max_steps=9, checkpoint_every=5, eval_every=9, spike_factor=0.5,
                       rollback_after=2)

    def keep(metrics, folder):
        if folder is not None:
            checkpoint_to(str(tmp_path / f"step{metrics['step']}"))(metrics, folder)

    target = _Metrics()
    summary = train(tiny_model(), cfg, tokens_uri, target, report=keep)
    assert (summary.skipped_steps, summary.rollbacks, summary.overflow_steps) == (4, 2, 0)
    assert [v for _, v in target.history("rollbacks")] == [0, 1, 1, 2]
    five, _ = load_model(str(tmp_path / "step5"))
    nine, _ = load_model(str(tmp_path / "step9"))
    for k, v in five.state_dict().items():
        torch.testing.assert_close(nine.state_dict()[k], v, atol=0, rtol=0, msg=k)


def test_the_early_stopping_checkpoint_is_the_best_steps_whole_state(tokens_uri, tmp_path):
    """Best weights come with the best step's optimizer state, step, token count and random state: a
    run resumed from the final checkpoint continues exactly as one resumed from that step's checkpoint."""
    from llm.train.checkpoint import load_optimizer_state
    from llm.train.loop import ResumeState

    model_cfg = tiny_model().model_copy(update={"dropout": 0.1})  # the random state must match too
    cfg = tiny_train(max_steps=60, eval_every=5, checkpoint_every=5, early_stopping_patience=1,
                     early_stopping_min_delta=10.0)

    def keep(metrics, folder):
        if folder is not None:
            name = "final" if "early_stopped" in metrics else f"step{metrics['step']}"
            checkpoint_to(str(tmp_path / name))(metrics, folder)

    summary = train(model_cfg, cfg, tokens_uri, report=keep)
    assert summary.steps == 10  # trained up to the stop
    final = str(tmp_path / "final")
    state = read_state(final)
    assert state["early_stopped"] is True
    assert state["step"] == state["best_step"] == 5 and state["tokens_seen"] == 5 * 8 * 32
    assert {int(s["step"]) for s in load_optimizer_state(final)["state"].values()} == {5}
    more = tiny_train(max_steps=8, eval_every=8, checkpoint_every=8, log_every=1)
    from_final = train(model_cfg, more, tokens_uri, resume=ResumeState.load(final),
                       report=checkpoint_to(str(tmp_path / "from-final")))
    from_best = train(model_cfg, more, tokens_uri, resume=ResumeState.load(str(tmp_path / "step5")),
                      report=checkpoint_to(str(tmp_path / "from-best")))
    assert [h["step"] for h in from_final.history] == [6, 7, 8]
    assert from_final.history == from_best.history
    assert from_final.tokens_seen == from_best.tokens_seen == 8 * 8 * 32
    a, _ = load_model(str(tmp_path / "from-final"))
    b, _ = load_model(str(tmp_path / "from-best"))
    for k, v in b.state_dict().items():
        torch.testing.assert_close(a.state_dict()[k], v, atol=0, rtol=0, msg=k)
