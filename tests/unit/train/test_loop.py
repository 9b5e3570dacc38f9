"""The training loop in-process (world of one): it learns, accumulates, checkpoints and resumes exactly."""

import logging

import pytest
import torch

from llm.train.checkpoint import load_model, read_state
from llm.train.loop import ResumeState, build_optimizer, checkpoint_to, train
from llm.model import GPT
from tests.unit.train.tiny import VOCAB, tiny_model, tiny_train


def test_loss_falls_well_below_the_initial_loss(tokens_uri, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="llm.train")
    ckpt = str(tmp_path / "ckpt")
    summary = train(tiny_model(), tiny_train(), tokens_uri, report=checkpoint_to(ckpt))
    assert summary.steps == 60
    assert summary.tokens_seen == 60 * 8 * 32
    # uniform guessing over 64 tokens is ln 64 = 4.16 nats; counting is nearly deterministic
    assert summary.initial_val_loss > 3.5
    assert summary.final_val_loss < 0.25 * summary.initial_val_loss
    assert summary.final_train_loss < 0.25 * summary.initial_val_loss
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 60/60")]
    assert lines and "grad_norm" in lines[0] and "tok/s" in lines[0]
    assert "mfu n/a" in lines[0] and "MiB" in lines[0]  # CPU: no peak to measure against
    # the saved checkpoint reproduces the final validation loss
    state = read_state(ckpt)
    assert state["step"] == 60 and state["vocab_size"] == VOCAB
    assert state["val_loss"] == pytest.approx(summary.final_val_loss)
    model, meta = load_model(ckpt)
    assert not model.training and meta["initial_val_loss"] == pytest.approx(summary.initial_val_loss)


def _weights(uri):
    model, _ = load_model(uri)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_weights(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


def test_gradient_accumulation_matches_one_big_batch(tokens_uri, tmp_path):
    cfg = dict(max_steps=4, checkpoint_every=4, eval_every=4, gradient_clipping=0.5)
    train(tiny_model(), tiny_train(**cfg), tokens_uri, report=checkpoint_to(str(tmp_path / "a")))
    train(tiny_model(), tiny_train(micro_batch_size=2, **cfg), tokens_uri, report=checkpoint_to(str(tmp_path / "b")))
    _assert_same_weights(_weights(str(tmp_path / "a")), _weights(str(tmp_path / "b")))


def test_resume_continues_exactly(tokens_uri, tmp_path):
    cfg = tiny_train(max_steps=6, checkpoint_every=3, eval_every=3)
    # dropout on: the resumed run must also continue the random stream where it stopped
    model_cfg = tiny_model().model_copy(update={"dropout": 0.1})
    seen = []

    def keep(metrics, folder):
        if folder is not None:
            checkpoint_to(str(tmp_path / f"step{metrics['step']}"))(metrics, folder)
        seen.append(metrics["step"])

    full = train(model_cfg, cfg, tokens_uri, report=keep)
    assert seen == [3, 6]
    resumed = train(model_cfg, cfg, tokens_uri, resume=ResumeState.load(str(tmp_path / "step3")),
                    report=checkpoint_to(str(tmp_path / "resumed")))
    assert resumed.steps == 6 and resumed.tokens_seen == full.tokens_seen
    assert resumed.initial_val_loss == pytest.approx(full.initial_val_loss)
    _assert_same_weights(_weights(str(tmp_path / "step6")), _weights(str(tmp_path / "resumed")), atol=1e-6)
    assert resumed.final_val_loss == pytest.approx(full.final_val_loss, abs=1e-6)


def test_weight_decay_only_on_matrices():
    model = GPT(tiny_model().model_copy(update={"vocab_size": VOCAB, "bias": True}))
    opt = build_optimizer(model, tiny_train(weight_decay=0.1), torch.device("cpu"))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert names and all(n.endswith(".weight") and "ln" not in n for n in names)
    assert "wte.weight" not in names and "wpe.weight" not in names
    assert "blocks.0.attn.qkv.weight" in names and "blocks.1.mlp.fc.weight" in names
    # every parameter is optimised exactly once (tied weights included)
    total = sum(len(g["params"]) for g in opt.param_groups)
    assert total == len(list(model.parameters()))


def test_bf16_autocast_trains(tokens_uri):
    summary = train(tiny_model(), tiny_train(precision="bf16", max_steps=20, eval_every=20), tokens_uri)
    assert summary.final_val_loss < summary.initial_val_loss - 0.5


def test_the_first_step_already_learns(tokens_uri, tmp_path):
    """Warmup starts above zero: step 0 moves the weights (a zero rate would only move Adam's moments)."""
    cfg = tiny_train(max_steps=1, checkpoint_every=1, eval_every=1, log_every=1)
    summary = train(tiny_model(), cfg, tokens_uri, report=checkpoint_to(str(tmp_path / "one")))
    assert summary.history[0]["lr"] == pytest.approx(cfg.learning_rate / cfg.warmup_steps)
    torch.manual_seed(cfg.seed)  # the loop's initial weights
    initial = GPT(tiny_model().model_copy(update={"vocab_size": VOCAB})).state_dict()
    trained = _weights(str(tmp_path / "one"))
    moved = [k for k in initial if not torch.equal(initial[k], trained[k])]
    assert moved == list(initial)
