"""Tensor parallelism and dropout: each rank's heads draw their own attention masks, while dropout on
replicated activations stays identical across the group (two processes on gloo)."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from llm.model import GPT
from llm.train.parallel import ParallelContext, ParallelModel
from tests.unit.train.tiny import VOCAB, tiny_model, tiny_train

DROPOUT = 0.5


def _probe_attention(probes: list) -> None:
    """Record, at every attention call, the output of the same call on inputs equal on every rank, with
    the random state the real call is about to use: equal probes on two ranks mean equal masks."""
    real = F.scaled_dot_product_attention

    def attention(q, k, v, *args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            fixed = torch.arange(v.numel(), dtype=v.dtype).reshape(v.shape) / v.numel()
            probes.append(real(torch.ones_like(q), torch.ones_like(k), fixed, *args, **kwargs))
        return real(q, k, v, *args, **kwargs)

    F.scaled_dot_product_attention = attention


def _tp_model(cfg, checkpointed: bool = False) -> ParallelModel:
    torch.manual_seed(0)
    model_cfg = tiny_model().model_copy(update={"vocab_size": VOCAB, "dropout": DROPOUT})
    ctx = ParallelContext.create(cfg, torch.device("cpu"))
    cfg = cfg.model_copy(update={"activation_checkpointing": 1 if checkpointed else 0})
    return ParallelModel(GPT(model_cfg), ctx, cfg)


def _worker(rank, world_size, store, results):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        cfg = tiny_train(num_workers=world_size, strategy="tp", tensor_parallel=2, batch_size=8, micro_batch_size=2)
        x = torch.randint(0, VOCAB, (2, 32), generator=torch.Generator().manual_seed(1))
        probes: list = []
        _probe_attention(probes)
        grads = {}
        for checkpointed in (False, True):
            parallel = _tp_model(cfg, checkpointed)
            parallel.module.train()
            torch.manual_seed(5)  # the loop seeds every rank of a tensor-parallel group alike
            logits, loss = parallel.module(x, x)
            loss.backward()
            grads[checkpointed] = {n: p.grad.detach().clone() for n, p in parallel.module.named_parameters()}
            if not checkpointed:
                results[("logits", rank)] = logits.detach()
                results[("probes", rank)] = [p.detach() for p in probes]
        results[("grads", rank)] = grads
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def tp_dropout(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tp-dropout")
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, str(tmp / "store"), results), nprocs=2)
    return dict(results)


def test_attention_dropout_differs_between_tensor_parallel_ranks(tp_dropout):
    a, b = tp_dropout[("probes", 0)], tp_dropout[("probes", 1)]
    assert len(a) == len(b) == tiny_model().layers
    for layer, (pa, pb) in enumerate(zip(a, b)):
        assert not torch.equal(pa, pb), f"block {layer}: both ranks' heads drew the same attention masks"


def test_dropout_on_replicated_activations_stays_identical(tp_dropout):
    # embeddings and both residual branches are dropped alike on every rank: the same logits
    torch.testing.assert_close(tp_dropout[("logits", 0)], tp_dropout[("logits", 1)], atol=0, rtol=0)


def test_recomputation_replays_the_per_rank_masks(tp_dropout):
    for rank in (0, 1):
        plain, checkpointed = tp_dropout[("grads", rank)][False], tp_dropout[("grads", rank)][True]
        for name in plain:
            torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
