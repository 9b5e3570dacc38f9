"""DDP over gloo in two local processes gives the same training as one process (no Ray needed)."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llm.train.checkpoint import load_model
from llm.train.loop import checkpoint_to, train
from tests.unit.train.tiny import tiny_model, tiny_train

CFG = dict(max_steps=4, checkpoint_every=4, eval_every=2, batch_size=8, micro_batch_size=2)


def _worker(rank: int, world_size: int, store: str, tokens_uri: str, out: str, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        summary = train(tiny_model(), tiny_train(num_workers=world_size, **CFG), tokens_uri, report=checkpoint_to(out))
        results[rank] = (summary.final_val_loss, summary.final_train_loss)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one_process(tokens_uri, tmp_path):
    single = train(tiny_model(), tiny_train(**CFG), tokens_uri, report=checkpoint_to(str(tmp_path / "one")))
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), tokens_uri, str(tmp_path / "two"), results), nprocs=2)
    # both ranks agree on the (all-reduced) losses, and they equal the single process's
    assert results[0] == results[1]
    assert abs(results[0][0] - single.final_val_loss) < 1e-5
    assert abs(results[0][1] - single.final_train_loss) < 1e-5
    one, _ = load_model(str(tmp_path / "one"))
    two, _ = load_model(str(tmp_path / "two"))
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
