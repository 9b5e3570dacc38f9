"""Validation loss under data parallelism: every rank runs the same forwards, the mean and the bytes
scored stay exact."""

import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llm.model import GPT
from llm.train.data import TokenDataset
from llm.train.parallel import ParallelContext, ParallelModel
from llm.train.validation import held_out_score
from tests.unit.train.tiny import VOCAB, tiny_model, tiny_train

# Three batches of two windows over two data-parallel ranks: rank 0 holds two batches, rank 1 one.
BATCHES, BATCH_SIZE = 3, 2
#: Seconds the two processes get; a rank left waiting in an all-gather would otherwise block forever.
TIMEOUT = 120


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_model().model_copy(update={"vocab_size": VOCAB}))


def _fsdp_worker(rank, world_size, store, tokens_uri, results):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        cfg = tiny_train(num_workers=world_size, strategy="fsdp", batch_size=4, micro_batch_size=2)
        ctx = ParallelContext.create(cfg, torch.device("cpu"))
        parallel = ParallelModel(_model(), ctx, cfg)
        val = TokenDataset(tokens_uri).split("val")
        score = held_out_score(parallel.module, val, 32, BATCH_SIZE, BATCHES, torch.device("cpu"), parallel=parallel)
        results[rank] = (score.loss, score.tokens, score.bytes)
    finally:
        dist.destroy_process_group()


def _spawn_or_fail(fn, args, nprocs, timeout):
    """Run `fn` in `nprocs` processes; kill them and fail the test if they are not done in `timeout` s."""
    context = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"validation did not finish in {timeout} s (a rank waits in a collective)")


def test_fsdp_validation_with_an_odd_batch_count_finishes_with_the_exact_mean(tokens_uri, tmp_path):
    single = held_out_score(_model(), TokenDataset(tokens_uri).split("val"), 32, BATCH_SIZE, BATCHES,
                            torch.device("cpu"))
    assert single.tokens == BATCHES * BATCH_SIZE * 32
    results = mp.Manager().dict()
    _spawn_or_fail(_fsdp_worker, (2, str(tmp_path / "store"), tokens_uri, results), 2, TIMEOUT)
    assert results[0] == results[1]
    loss, tokens, nbytes = results[0]
    # the padding forward adds no tokens nor bytes: the same token-weighted mean over the same windows
    assert tokens == single.tokens and nbytes == single.bytes > tokens
    assert loss == pytest.approx(single.loss, abs=1e-5)
