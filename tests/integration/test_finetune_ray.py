"""Fine-tuning on Ray Train with two workers: a run resumed from a mid-run checkpoint ends with exactly
the weights of an uninterrupted one (lora and full, under ddp), and LoRA under FSDP2 trains the same
adapter as under ddp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llm.config import FinetuneConfig, FinetuneTrainConfig, SftDataConfig
from tests.finetune_setup import build_setup

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS, CHECKPOINT_EVERY = 12, 6


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory):
    return build_setup(tmp_path_factory.mktemp("finetune-ray"), context_length=64, pretrain_steps=40)


def _config(setup, method: str, strategy: str = "ddp") -> FinetuneConfig:
    train = FinetuneTrainConfig(strategy=strategy, num_workers=2, batch_size=8, micro_batch_size=2, max_steps=STEPS,
                        eval_every=CHECKPOINT_EVERY, eval_batches=2, log_every=CHECKPOINT_EVERY,
                        checkpoint_every=CHECKPOINT_EVERY, warmup_steps=2, learning_rate=1e-2, system_metrics=False,
                        registered_model=None)
    lora = {"rank": 4, "dropout": 0.1}  # dropout: resume must also continue each rank's random stream
    return FinetuneConfig.model_validate({"method": method, "data": SftDataConfig(path=setup.sft).model_dump(),
                                          "train": train.model_dump(), "lora": lora, "sample_prompts": []})


def _weights(checkpoint: str) -> dict[str, torch.Tensor]:
    from llm.train.checkpoint import load_model_state, read_state

    return load_model_state(checkpoint, weights_file=read_state(checkpoint)["weights_file"])


def _checkpoint_at(output: Path, step: int) -> str:
    for state in sorted(output.glob("ray/finetune-*/checkpoint_*/state.json")):
        if json.loads(state.read_text())["step"] == step:
            return str(state.parent)
    raise AssertionError(f"no Ray Train checkpoint of step {step} under {output}")


@pytest.fixture(scope="module")
def ddp_runs(ray_local, setup, tmp_path_factory):
    """Uninterrupted ddp fine-tunes, one per method, made once for the tests below."""
    from llm.finetune.trainer import finetune

    made = {}

    def run(method: str):
        if method not in made:
            out = tmp_path_factory.mktemp(f"ddp-{method}")
            made[method] = (finetune(_config(setup, method), setup.base, setup.tokenizer, str(out / "whole")), out)
        return made[method]

    return run


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resumed_finetune_is_bit_exact_under_ddp(setup, ddp_runs, method, tmp_path):
    from llm.finetune.trainer import EXAMPLES_FILE
    from llm.train.trainer import fit_on_ray

    ft = _config(setup, method)
    whole, folder = ddp_runs(method)
    assert whole.steps == STEPS and whole.response_loss_after < whole.response_loss_before
    expected_file = "adapter.pt" if method == "lora" else "model.pt"
    assert Path(whole.checkpoint_uri, expected_file).is_file()

    # The same fine-tune continued from its step-6 checkpoint in a fresh Ray Train run.
    from llm.finetune.workload import file_digest

    with open(f"{setup.base}/model.pt", "rb") as f:
        digest = file_digest(f.read())
    resumed = fit_on_ray(
        {"finetune": ft.model_dump(mode="json"), "base_uri": setup.base, "base_digest": digest,
         "examples_uri": str(folder / "whole" / EXAMPLES_FILE), "run_target": None,
         "resume_from": _checkpoint_at(folder / "whole", CHECKPOINT_EVERY)},
        ft.train, "finetune-resumed", str(tmp_path / "resumed"))
    a, b = _weights(whole.checkpoint_uri), _weights(resumed)
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_lora_under_fsdp_on_two_ranks_trains_the_ddp_adapter(setup, ddp_runs, tmp_path):
    from llm.finetune.trainer import finetune

    ddp, _ = ddp_runs("lora")
    fsdp = finetune(_config(setup, "lora", "fsdp"), setup.base, setup.tokenizer, str(tmp_path / "fsdp"))
    a, b = _weights(ddp.checkpoint_uri), _weights(fsdp.checkpoint_uri)
    assert set(a) == set(b) and all("lora_" in name for name in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)
    assert fsdp.response_loss_after == pytest.approx(ddp.response_loss_after, rel=1e-5)
    assert fsdp.checkpoint_bytes == ddp.checkpoint_bytes < fsdp.base_bytes / 5
