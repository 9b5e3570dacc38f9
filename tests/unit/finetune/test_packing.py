"""Packing SFT examples into windows, the data-parallel batches and their loss weights, and the
guarantees a packed batch gives the model: no gradient from masked targets, no attention across examples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm.config import ChatTemplateConfig, ModelConfig, SftDataConfig
from llm.finetune.packing import (
    IGNORE, Batch, SftBatches, SftExamples, SftSplit, Windows, make_batch, pack_windows, response_loss, val_batches,
    val_response_bytes,
)
from llm.finetune.sft_data import prepare_sft
from llm.model.gpt import GPT
from llm.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece

SPECIAL = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
T = 64


@pytest.fixture(scope="module")
def tokenizer(shared_data):
    lines = (shared_data / "sft_dev.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    texts = [r["prompt"] + "\n" + r["response"] for r in rows if r["label"] == "english"][:300]
    return SentencePieceTokenizer(train_sentencepiece(texts, vocab_size=400, special_tokens=SPECIAL))


@pytest.fixture(scope="module")
def examples(shared_data, tokenizer, tmp_path_factory):
    # English pairs: short under this tokenizer, so several share a window of T.
    lines = (shared_data / "sft_dev.jsonl").read_text(encoding="utf-8").splitlines()
    path = tmp_path_factory.mktemp("sft") / "english.jsonl"
    path.write_text("\n".join([line for line in lines if '"label": "english"' in line][:500]) + "\n")
    cfg = SftDataConfig(path=str(path), val_fraction=0.2)
    return prepare_sft(cfg, ChatTemplateConfig(), tokenizer, context_length=T)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return GPT(ModelConfig(layers=2, hidden_size=32, attention_heads=4, vocab_size=tokenizer.vocab_size,
                           context_length=T)).eval()


def all_windows(split: SftSplit, batches: SftBatches):
    return make_batch(split, batches.packed, np.arange(batches.windows), T, batches.pad_id)


def check_rows(split: SftSplit, windows: Windows, batch, pad_id: int) -> None:
    """Every row holds its examples whole, in order, each with positions from 0, its own segment and
    next-token targets kept only where the mask trains; the rest is masked padding."""
    for row in range(len(windows)):
        members = windows.examples[windows.offsets[row]:windows.offsets[row + 1]]
        at = 0
        for segment, example in enumerate(members):
            ids, mask = split.example(int(example))
            n = len(ids) - 1
            span = slice(at, at + n)
            assert batch.inputs[row, span].tolist() == ids[:-1].tolist()
            assert batch.targets[row, span].tolist() == np.where(mask[1:] == 1, ids[1:], IGNORE).tolist()
            assert batch.positions[row, span].tolist() == list(range(n))
            assert (batch.segments[row, span] == segment).all()
            at += n
        assert (batch.inputs[row, at:] == pad_id).all() and (batch.targets[row, at:] == IGNORE).all()
        assert (batch.segments[row, at:] == len(members)).all()
        assert len(set(batch.segments[row].tolist())) == len(members) + (at < T)


def test_packed_windows_keep_examples_whole(examples):
    split = examples.train
    batches = SftBatches(split, T, batch_size=8, micro_batch_size=4, seed=3)
    assert sorted(batches.packed.examples.tolist()) == list(range(len(split)))  # each example once, whole
    assert batches.windows < len(split) and np.diff(batches.packed.offsets).max() >= 3  # packing does pack
    batch = all_windows(split, batches)
    assert all(t.dtype == torch.int64 and t.shape == (batches.windows, T) for t in batch)
    check_rows(split, batches.packed, batch, batches.pad_id)
    # Independently of the layout: a trained target is the next input of the same example.
    inner = (batch.targets[:, :-1] != IGNORE) & (batch.segments[:, 1:] == batch.segments[:, :-1])
    assert torch.equal(batch.targets[:, :-1][inner], batch.inputs[:, 1:][inner])
    assert int((batch.targets != IGNORE).sum()) == int(batches.trained.sum())


def test_unpacked_is_one_example_per_window(examples):
    batches = SftBatches(examples.train, T, 8, 8, seed=3, pack=False)
    assert batches.windows == len(examples.train)
    assert np.array_equal(np.diff(batches.packed.offsets), np.ones(batches.windows))
    check_rows(examples.train, batches.packed, all_windows(examples.train, batches), 0)


def global_batch(batches: list[SftBatches], step: int) -> tuple[Batch, list[list[float]]]:
    """The step's micro-batches of all ranks concatenated in rank order, and each rank's weights."""
    parts, weights = [], []
    for b in batches:
        micro, w = b.step(step)
        parts += micro
        weights.append(w)
    return concat(parts), weights


@pytest.mark.parametrize("dp,micro", [(2, 4), (2, 2), (4, 1)])
def test_same_global_batch_for_any_dp_and_weights_give_the_global_mean(examples, dp, micro):
    split = examples.train
    single = SftBatches(split, T, batch_size=8, micro_batch_size=8, seed=5)
    ranks = [SftBatches(split, T, 8, micro, seed=5, dp_rank=r, dp=dp) for r in range(dp)]
    gen = torch.Generator().manual_seed(dp)
    for step in (0, 1, 17):
        expected, _ = global_batch([single], step)
        got, weights = global_batch(ranks, step)
        assert all(torch.equal(a, b) for a, b in zip(expected, got))
        # Random per-token losses: the weighted per-micro-batch means, averaged over ranks, are the
        # mean over every trained target of the global batch.
        loss = torch.rand(expected[1].shape, generator=gen, dtype=torch.float64)
        trained = expected[1] != IGNORE
        rows_per_micro, total = micro, 0.0
        for rank, w in enumerate(weights):
            for i, weight in enumerate(w):
                rows = slice((rank * len(w) + i) * rows_per_micro, (rank * len(w) + i + 1) * rows_per_micro)
                total += weight / dp * loss[rows][trained[rows]].mean().item()
        assert total == pytest.approx(loss[trained].mean().item(), rel=1e-12)
        assert sum(sum(w) for w in weights) == pytest.approx(dp)


def test_each_window_once_per_epoch_and_seeded(examples):
    batches = SftBatches(examples.train, T, 8, 8, seed=5)
    steps = -(-batches.windows // 8)
    seen = np.concatenate([batches.global_windows(s) for s in range(steps)])[:batches.windows]
    assert sorted(seen.tolist()) == list(range(batches.windows))
    again = SftBatches(examples.train, T, 8, 8, seed=5)
    assert np.array_equal(again.global_windows(3), batches.global_windows(3))
    other = SftBatches(examples.train, T, 8, 8, seed=6)
    assert not np.array_equal(other.global_windows(3), batches.global_windows(3))
    with pytest.raises(ValueError, match="multiple of micro_batch_size x dp"):
        SftBatches(examples.train, T, 8, 3, seed=5)


def test_val_batches_in_file_order_sharded_by_rank(examples):
    split = examples.val
    whole = list(val_batches(split, T, batch_size=4))
    assert whole[0].inputs[0, :len(split.example(0)[0]) - 1].tolist() == split.example(0)[0][:-1].tolist()
    windows = pack_windows(np.diff(split.offsets), T, range(len(split)))
    check_rows(split, windows, concat(whole), 0)
    shards = [list(val_batches(split, T, 4, dp_rank=r, dp=2)) for r in range(2)]
    assert [len(s) for s in shards] == [len(whole[0::2]), len(whole[1::2])]
    for mine, expected in zip(shards[0] + shards[1], whole[0::2] + whole[1::2]):
        assert all(torch.equal(a, b) for a, b in zip(mine, expected))
    assert len(list(val_batches(split, T, 4, num_batches=2))) == 2


def concat(batches: list[Batch]) -> Batch:
    return Batch(*(torch.cat([b[i] for b in batches]) for i in range(4)))


def test_response_loss_sums_over_trained_targets(examples, model):
    batches = list(val_batches(examples.val, T, batch_size=4))
    total, tokens = response_loss(model, batches, "cpu")
    assert tokens == sum(int((b.targets != IGNORE).sum()) for b in batches)
    expected = 0.0
    for b in batches:
        _, mean = model(b.inputs, b.targets, b.positions, b.segments)
        expected += mean.item() * int((b.targets != IGNORE).sum())
    assert total == pytest.approx(expected, rel=1e-5)
    halves = [response_loss(model, val_batches(examples.val, T, 4, dp_rank=r, dp=2), "cpu") for r in range(2)]
    assert sum(h[0] for h in halves) == pytest.approx(total, rel=1e-9) and sum(h[1] for h in halves) == tokens


def test_response_bytes_are_those_of_the_scored_responses_text(shared_data, examples):
    responses = {json.loads(line)["response"] for line in (shared_data / "sft_dev.jsonl").open(encoding="utf-8")}
    split = examples.val
    every = val_response_bytes(split, T, batch_size=4)
    # every held-out example is scored: the bytes of the responses' text, each found among the inputs
    per_example = []
    for i in range(len(split)):
        ids, mask = split.example(i)
        nbytes = split.text_bytes[split.offsets[i]:split.offsets[i + 1]]
        per_example.append(int(nbytes[1:][mask[1:] == 1].sum()))
    assert every == sum(per_example) > 0
    assert all(n in {len(r.encode("utf-8")) for r in responses} for n in per_example)
    # fewer batches score fewer examples; examples prepared before bytes were recorded have none
    assert 0 < val_response_bytes(split, T, batch_size=1, num_batches=1) < every
    old = SftSplit(split.ids, split.mask, split.offsets, split.names)
    assert val_response_bytes(old, T, batch_size=4) is None


def test_saved_examples_keep_their_bytes_per_token(examples, tmp_path):
    examples.save(str(tmp_path / "examples.npz"))
    loaded = SftExamples.load(str(tmp_path / "examples.npz"))
    assert np.array_equal(loaded.val.text_bytes, examples.val.text_bytes)
    assert np.array_equal(loaded.train.text_bytes, examples.train.text_bytes)


def grads(model, loss) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def test_masked_targets_give_no_gradient(examples, model, tokenizer):
    batches = SftBatches(examples.train, T, 2, 2, seed=1)
    (batch,), _ = batches.step(0)
    inputs, targets, positions, segments = batch
    trained = targets != IGNORE
    masked = ~trained & (positions < T - 1)
    assert masked.any() and trained.any()
    # Two would-be label arrays that agree on the trained targets and differ on every masked one.
    labels_a = torch.where(trained, targets, torch.roll(inputs, -1, dims=1))
    shift = 1 + torch.randint(0, 50, labels_a.shape, generator=torch.Generator().manual_seed(0))
    labels_b = torch.where(trained, labels_a, (labels_a + shift) % tokenizer.vocab_size)
    assert (labels_a != labels_b)[~trained].all()

    def mean_loss(labels):  # the model's own loss: targets -100 where not trained
        return model(inputs, labels.masked_fill(~trained, IGNORE), positions, segments)[1]

    def weighted_loss(labels):  # every position's loss computed, then weighted 0 where not trained
        logits, _ = model(inputs, positions=positions, segments=segments)
        per_token = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.view(-1), reduction="none")
        return (per_token * trained.view(-1)).sum() / trained.sum()

    g_a, g_b = grads(model, mean_loss(labels_a)), grads(model, mean_loss(labels_b))
    w_a, w_b = grads(model, weighted_loss(labels_a)), grads(model, weighted_loss(labels_b))
    assert all(torch.equal(a, b) for a, b in zip(g_a, g_b))
    assert all(torch.equal(a, b) for a, b in zip(w_a, w_b))  # real, different labels there: still nothing
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(g_a, w_a))
    # The check can fail: training one prompt position as well changes the gradient.
    row, col = [int(i) for i in masked.nonzero()[0]]
    opened = trained.clone()
    opened[row, col] = True
    g_open = grads(model, model(inputs, labels_b.masked_fill(~opened, IGNORE), positions, segments)[1])
    assert not all(torch.equal(a, b) for a, b in zip(g_a, g_open))


def test_packed_examples_do_not_attend_to_each_other(examples, model):
    split = examples.train
    lengths = np.diff(split.offsets)
    a, b = [int(i) for i in np.flatnonzero(lengths < T // 2 - 2)[:2]]
    pair = Windows(np.array([a, b]), np.array([0, 2]))
    row = make_batch(split, pair, np.array([0]), T, 0)
    n_a, n_b = int(lengths[a]) - 1, int(lengths[b]) - 1
    span_b = slice(n_a, n_a + n_b)
    # Example A with other tokens: B's logits in the same row do not move.
    changed_ids = split.ids.copy()
    start = int(split.offsets[a]) + 1
    changed_ids[start:start + n_a] = (changed_ids[start:start + n_a] + 7) % model.cfg.vocab_size
    changed = make_batch(SftSplit(changed_ids, split.mask, split.offsets, split.names), pair, np.array([0]), T, 0)
    with torch.no_grad():
        logits = model(row.inputs, positions=row.positions, segments=row.segments)[0]
        logits_changed = model(changed.inputs, positions=changed.positions, segments=changed.segments)[0]
        alone = make_batch(split, Windows(np.array([b]), np.array([0, 1])), np.array([0]), T, 0)
        logits_alone = model(alone.inputs, positions=alone.positions, segments=alone.segments)[0]
        unpadded = model(alone.inputs[:, :n_b], positions=alone.positions[:, :n_b])[0]
    assert not torch.equal(row.inputs, changed.inputs)
    assert not torch.allclose(logits[0, :n_a], logits_changed[0, :n_a])
    assert torch.allclose(logits[0, span_b], logits_changed[0, span_b], rtol=0, atol=1e-6)
    # And B packed after A is B on its own (in a padded row, or unpadded with plain causal attention).
    assert torch.allclose(logits[0, span_b], logits_alone[0, :n_b], rtol=0, atol=1e-6)
    assert torch.allclose(logits[0, span_b], unpadded[0], rtol=0, atol=1e-6)
