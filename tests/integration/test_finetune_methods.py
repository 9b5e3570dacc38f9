"""Fine-tuning through the shared training loop, in-process (a world of one): every method lowers the
held-out response loss of a briefly pretrained base on real multilingual SFT pairs, activation
checkpointing changes nothing but memory, and adapter checkpoints are small, tied to their base and
export merged or as base + adapter."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from llm.config import FinetuneConfig, FinetuneTrainConfig, SftDataConfig
from llm.errors import UserError
from tests.finetune_setup import build_setup

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 120
LEARNING_RATES = {"full": 3e-3, "lora": 1e-2, "adapter": 1e-2, "prefix": 3e-2}


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory):
    return build_setup(tmp_path_factory.mktemp("finetune"))


def _config(setup, method: str, steps: int = STEPS, **train) -> FinetuneConfig:
    train_cfg = FinetuneTrainConfig(num_workers=1, batch_size=16, micro_batch_size=8, max_steps=steps, eval_every=steps,
                            eval_batches=4, log_every=steps, checkpoint_every=steps, warmup_steps=10,
                            learning_rate=LEARNING_RATES[method], system_metrics=False, registered_model=None, **train)
    return FinetuneConfig(method=method, data=SftDataConfig(path=setup.sft), train=train_cfg)


def _workload(setup, ft: FinetuneConfig, folder):
    from llm.finetune.sft_data import prepare_sft
    from llm.finetune.workload import FinetuneWorkload, file_digest
    from llm.tokenizer.base import load_tokenizer
    from llm.train.checkpoint import tokenizer_record

    examples = prepare_sft(ft.data, ft.template, load_tokenizer(setup.tokenizer),
                           setup.model_cfg.context_length)
    examples.save(str(folder / "examples.npz"))
    with open(f"{setup.base}/model.pt", "rb") as f:
        digest = file_digest(f.read())
    return FinetuneWorkload(ft, setup.base, digest, str(folder / "examples.npz"), tokenizer_record(setup.tokenizer))


def _run(setup, ft: FinetuneConfig, folder):
    from llm.train.loop import checkpoint_to, run_workload

    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    return run_workload(_workload(setup, ft, folder), ft.train, report=checkpoint_to(str(folder / "ckpt")))


@pytest.mark.parametrize("method", ["full", "lora", "adapter", "prefix"])
def test_each_method_lowers_the_held_out_response_loss(setup, method, tmp_path):
    summary = _run(setup, _config(setup, method), tmp_path)
    # Measured (120 steps): full 6.20 -> 4.9, lora 6.20 -> 5.5, adapter 6.20 -> 5.7, prefix about 0.1.
    least = {"full": 0.8, "lora": 0.4, "adapter": 0.3, "prefix": 0.05}[method]
    assert summary.final_val_loss < summary.initial_val_loss - least, (summary.initial_val_loss, summary.final_val_loss)


def _tensor_digest(state: dict) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_activation_checkpointing_trains_the_same_weights(setup, method, tmp_path):
    """Recomputing the blocks in backward must reach the method's parameters (the no-grad trap), and
    gives the very gradients of the plain run: the trained weights are equal."""
    from llm.train.checkpoint import ADAPTER_FILE, load_model_state

    plain = _run(setup, _config(setup, method, steps=20), tmp_path / "plain")
    checkpointed = _run(setup, _config(setup, method, steps=20, activation_checkpointing=1), tmp_path / "ckpt")
    assert checkpointed.final_val_loss < checkpointed.initial_val_loss
    a = load_model_state(str(tmp_path / "plain" / "ckpt"), weights_file=ADAPTER_FILE)
    b = load_model_state(str(tmp_path / "ckpt" / "ckpt"), weights_file=ADAPTER_FILE)
    assert set(a) == set(b) and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    assert plain.final_val_loss == pytest.approx(checkpointed.final_val_loss, rel=1e-5)


def test_adapter_checkpoint_is_small_names_its_base_and_exports(setup, tmp_path):
    from llm.finetune.export import export, load_finetuned
    from llm.model.gpt import GPT
    from llm.train.checkpoint import load_model, read_state

    ft = _config(setup, "lora", steps=30)
    _run(setup, ft, tmp_path)
    ckpt = tmp_path / "ckpt"
    state = read_state(str(ckpt))
    assert state["weights_file"] == "adapter.pt" and not (ckpt / "model.pt").exists()
    adapter_bytes = (ckpt / "adapter.pt").stat().st_size
    base_bytes = (Path(setup.base) / "model.pt").stat().st_size
    assert adapter_bytes < base_bytes / 5, (adapter_bytes, base_bytes)
    with open(f"{setup.base}/model.pt", "rb") as f:
        assert state["finetune"]["base_digest"] == hashlib.sha256(f.read()).hexdigest()

    tuned, _ = load_finetuned(str(ckpt), merge=False)
    merged, _ = load_model(str(ckpt))  # merged for inference
    ids = torch.randint(4, setup.model_cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids)[0], tuned(ids)[0], rtol=1e-5, atol=1e-5)

    # Merged export: a plain checkpoint that a plain GPT loads, same outputs.
    export(str(ckpt), str(tmp_path / "merged"), "merged")
    plain, plain_state = load_model(str(tmp_path / "merged"))
    assert type(plain) is GPT and plain_state["weights_file"] == "model.pt"
    assert not any("lora" in name for name in plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(ids)[0], tuned(ids)[0], rtol=1e-5, atol=1e-5)

    # Base + adapter export: the adapter file as trained, still tied to the base's digest.
    export(str(ckpt), str(tmp_path / "adapter"), "adapter")
    assert (tmp_path / "adapter" / "adapter.pt").read_bytes() == (ckpt / "adapter.pt").read_bytes()
    again, _ = load_model(str(tmp_path / "adapter"))
    with torch.no_grad():
        torch.testing.assert_close(again(ids)[0], tuned(ids)[0], rtol=1e-5, atol=1e-5)

    # Hugging Face: GPT-2 with the LoRA merged, its tokenizer found through the checkpoint's record.
    from transformers import AutoModelForCausalLM

    from llm.export.hf import export_hf

    assert state["tokenizer"]["sha256"] == hashlib.sha256(Path(setup.tokenizer).read_bytes()).hexdigest()
    export_hf(str(ckpt), str(tmp_path / "hf"), "hf")
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf_model(input_ids=ids).logits, tuned(ids)[0], rtol=0, atol=1e-4)

    # A base that changed since: refused, naming the digest, rather than silently mixing weights.
    moved = tmp_path / "other_base"
    moved.mkdir()
    weights = torch.load(f"{setup.base}/model.pt", weights_only=True)
    weights["ln_f.weight"] = weights["ln_f.weight"] + 1
    torch.save(weights, moved / "model.pt")
    with pytest.raises(UserError, match="not the one this fine-tune was made from"):
        load_finetuned(str(ckpt), base_uri=str(moved))


def test_prefix_export_drops_the_reparametrization_and_refuses_merging(setup, tmp_path):
    from llm.finetune.export import export, load_finetuned

    ft = _config(setup, "prefix", steps=10)
    ft = ft.model_copy(update={"prefix": ft.prefix.model_copy(update={"reparam_hidden": 32})})
    _run(setup, ft, tmp_path)
    trained, _ = load_finetuned(str(tmp_path / "ckpt"), merge=False)
    inference, _ = load_finetuned(str(tmp_path / "ckpt"))
    assert any("mlp" in n for n, _ in trained.named_parameters() if "prefix" in n)
    assert not any("mlp" in n for n, _ in inference.named_parameters() if "prefix" in n)
    ids = torch.randint(4, setup.model_cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(inference(ids)[0], trained(ids)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="cannot be merged"):
        export(str(tmp_path / "ckpt"), str(tmp_path / "out"), "merged")


def test_unsupported_combinations_are_refused_up_front():
    from llm.finetune.methods import check_supported

    pipeline = FinetuneTrainConfig(strategy="pp", num_workers=2, pipeline_parallel=2, batch_size=16, micro_batch_size=4)
    with pytest.raises(UserError, match="finetune.method prefix does not run under pipeline parallelism"):
        check_supported(FinetuneConfig(method="prefix", train=pipeline))
    tensor = FinetuneTrainConfig(strategy="tp", num_workers=2, tensor_parallel=2)
    with pytest.raises(UserError, match="tensor parallelism"):
        check_supported(FinetuneConfig(method="lora", train=tensor))
    with pytest.raises(UserError, match="resume_from"):
        check_supported(FinetuneConfig(train=FinetuneTrainConfig(resume_from="last")))
