"""`export --format hf|peft`: a checkpoint as a transformers GPT-2 folder (or a PEFT LoRA adapter beside its
base), loaded offline by transformers and peft themselves and compared with the project's model and
tokenizer: logits, greedy generations, token ids on real multilingual text and decoding."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from llm.config import CHAT_SPECIAL_TOKENS, FinetuneConfig, LoraConfig, ModelConfig, TrainConfig
from llm.errors import UserError
from llm.model.gpt import GPT
from llm.train.checkpoint import ADAPTER_FILE, save_checkpoint, tokenizer_record
from tests.conftest import SHARED_DATA
from tests.hf_export_setup import (VOCAB, perturbed_model, sft_texts, tiny_config, token_ids, train_tokenizer,
                                   write_checkpoint)

#: Leading spaces, indentation, digits, byte-fallback characters, chat markers and bos/eos typed as text.
EDGE_TEXTS = ["  two leading spaces", " one", "x", "", "def f():\n    return 1  \n\ttab", "digits 12345 and 3.14",
              "<|user|>hi<|end|>\n<|assistant|>", "emoji \U0001f389 ok", "<s>literal</s>", "a  b   c", "trailing  "]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Matrices of a few dozen columns: more threads only wait on each other on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> str:
    """The tokenizer, trained here on real multilingual text (`train_tokenizer`)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"development data not found at {SHARED_DATA}")
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "spm.model")


def _lora_checkpoint(folder: Path, base: str, cfg: ModelConfig, lora: LoraConfig) -> str:
    """An adapter-only LoRA checkpoint on `base` as the fine-tune writes it, its updates random (non-zero)."""
    from llm.finetune.methods import apply_method
    from llm.finetune.workload import file_digest, load_base
    from llm.model.peft import peft_state_dict

    weights, _ = load_base(base, None)
    model = GPT(cfg)
    model.load_state_dict(weights)
    ft = FinetuneConfig(method="lora", lora=lora)
    apply_method(model, ft)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.2)
    info = {"method": "lora", "base": base, "base_digest": file_digest((Path(base) / "model.pt").read_bytes()),
            "config": ft.model_dump(mode="json")}
    save_checkpoint(str(folder), peft_state_dict(model), None, 2, cfg, TrainConfig(), {"finetune": info},
                    weights_file=ADAPTER_FILE)
    return str(folder)


def _assert_same_model(ours: GPT, hf_model) -> None:
    """Logits within 1e-4 everywhere, and greedy decoding identical token for token."""
    ids = token_ids(0)
    with torch.no_grad():
        torch.testing.assert_close(hf_model(input_ids=ids).logits, ours(ids)[0], rtol=0, atol=1e-4)
    prompt = ids[:1, :8]
    expected = ours.generate(prompt, 40, temperature=0)
    got = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False)
    # transformers stops at eos (id 3), the project's generate does not: the same tokens up to there.
    assert got.tolist() == expected[:, :got.shape[1]].tolist()
    assert got.shape[1] == expected.shape[1] or got[0, -1] == 3


@pytest.mark.parametrize("tie, bias", [(True, False), (False, True), (True, True), (False, False)])
def test_plain_checkpoint_loads_in_transformers_with_the_same_outputs(tokenizer_path, tmp_path, tie, bias):
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel

    from llm.export.hf import export_hf

    model = perturbed_model(tiny_config(tie_embeddings=tie, bias=bias))
    written = export_hf(write_checkpoint(tmp_path / "ckpt", model, tokenizer_path), str(tmp_path / "hf"))
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= set(written["files"])
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf_model) is GPT2LMHeadModel
    tied = hf_model.lm_head.weight.data_ptr() == hf_model.transformer.wte.weight.data_ptr()
    assert tied == tie
    _assert_same_model(model, hf_model)
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (2, 3, 0)


def test_tokenizer_gives_the_same_ids_on_real_text_and_decodes_back(tokenizer_path, tmp_path):
    from transformers import AutoTokenizer

    from llm.export.hf import export_hf
    from llm.tokenizer import load_tokenizer

    model = perturbed_model(tiny_config())
    export_hf(write_checkpoint(tmp_path / "ckpt", model, tokenizer_path), str(tmp_path / "hf"))
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    sp = load_tokenizer(tokenizer_path)
    byte_ids = set(sp.byte_fallback_ids().tolist())
    langid = [json.loads(line)["text"] for line in (SHARED_DATA / "langid_dev.jsonl").read_text("utf-8").splitlines()]
    texts = sft_texts()[5::10] + langid + EDGE_TEXTS  # SFT pairs the tokenizer did not train on, 13 more languages
    byte_fallback = 0
    for text in texts:
        ids = sp.encode(text)
        assert hf_tok.encode(text, add_special_tokens=False) == ids, text
        assert hf_tok(text)["input_ids"] == ids, text  # nothing added by default, as the project's encode
        assert hf_tok.decode(ids) == text == sp.decode(ids), text
        byte_fallback += bool(set(ids) & byte_ids)
    assert byte_fallback > 10  # rare characters did go through byte tokens
    assert [hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id, hf_tok.unk_token_id] == [2, 3, 0, 1]
    assert [hf_tok.convert_tokens_to_ids(m) for m in CHAT_SPECIAL_TOKENS] == [sp.piece_id(m) for m in CHAT_SPECIAL_TOKENS]
    assert hf_tok.decode([2, *sp.encode("hi"), 3], skip_special_tokens=True) == "hi"
    assert hf_tok.model_max_length == 64
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["split_special_tokens"]

    # The project's greedy completions (bos + prompt, up to eos) from prompts encoded by the exported tokenizer
    # and run through the exported model. Decoded by SentencePiece: a random model emits byte tokens that are
    # no UTF-8, where the two decoders place their replacement characters differently.
    from transformers import AutoModelForCausalLM

    from llm.eval.generate import sample_completions

    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    # Prompts short enough for the 64-token context (the project's generate slides its window past it).
    prompts = [p for p in (text.split("\n")[0] for text in sft_texts()[7::100]) if len(sp.encode(p)) < 32][:6]
    for sample in sample_completions(model, sp, prompts, max_new_tokens=24, temperature=0, top_k=0):
        ids = torch.tensor([[hf_tok.bos_token_id, *hf_tok.encode(sample["prompt"])]])
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
        new_ids = out[0, ids.shape[1]:].tolist()
        assert sp.decode(new_ids[:new_ids.index(3)] if 3 in new_ids else new_ids) == sample["completion"]


def test_lora_checkpoint_exports_merged_and_as_a_peft_adapter(tokenizer_path, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.export.hf import export_hf
    from llm.finetune.export import load_finetuned

    cfg = tiny_config(bias=True)
    base = write_checkpoint(tmp_path / "base", perturbed_model(cfg), tokenizer_path)
    ckpt = _lora_checkpoint(tmp_path / "lora", base, cfg, LoraConfig(rank=4, alpha=8.0, targets=["qkv", "proj", "fc"]))
    merged, _ = load_finetuned(ckpt)
    unmerged, _ = load_finetuned(ckpt, merge=False)
    plain_base = perturbed_model(cfg)  # the base's weights, to show the LoRA update matters
    ids = token_ids(2)
    with torch.no_grad():
        assert (merged(ids)[0] - plain_base(ids)[0]).abs().max() > 0.1

    # Merged: a plain GPT-2 (the tokenizer taken from the base's record: the checkpoint holds none).
    written = export_hf(ckpt, str(tmp_path / "hf"), "hf")
    assert written["tokenizer"] == str(Path(tokenizer_path).resolve())
    _assert_same_model(merged, AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval())

    # PEFT: adapter files at OUT, the base as an hf folder at OUT/base, loaded by peft itself.
    out = tmp_path / "peft"
    export_hf(ckpt, str(out), "peft")
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ["c_attn", "c_fc", "c_proj"] and adapter["r"] == 4
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base"), out).eval()
    ids = token_ids(3)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, unmerged(ids)[0], rtol=0, atol=1e-4)
    _assert_same_model(merged, peft_model.merge_and_unload().eval())
    assert AutoTokenizer.from_pretrained(out).encode("hello world") == AutoTokenizer.from_pretrained(out / "base").encode("hello world")


def test_lora_on_some_targets_maps_to_the_same_gpt2_modules(tokenizer_path, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from llm.export.hf import export_hf
    from llm.finetune.export import load_finetuned

    cfg = tiny_config(tie_embeddings=False)
    base = write_checkpoint(tmp_path / "base", perturbed_model(cfg), tokenizer_path)
    ckpt = _lora_checkpoint(tmp_path / "lora", base, cfg, LoraConfig(rank=2, alpha=2.0, targets=["proj"]))
    export_hf(ckpt, str(tmp_path / "peft"), "peft")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "peft" / "base"),
                                           tmp_path / "peft").eval()
    lora_modules = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A" in n}
    assert len(lora_modules) == 2 * cfg.layers and all(m.endswith("c_proj") for m in lora_modules)
    unmerged, _ = load_finetuned(ckpt, merge=False)
    ids = token_ids(4)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, unmerged(ids)[0], rtol=0, atol=1e-4)


def test_what_gpt2_or_the_export_cannot_take_is_refused_by_name(tokenizer_path, tmp_path):
    from llm.export.gpt2 import MAPPED_FIELDS
    from llm.export.hf import export_hf
    from llm.finetune.workload import file_digest

    # Every setting of the model config is one the mapping expresses: a new one must be mapped or refused.
    assert set(ModelConfig.model_fields) == MAPPED_FIELDS
    model = perturbed_model(tiny_config())
    old = write_checkpoint(tmp_path / "old", model, tokenizer=None)
    with pytest.raises(UserError, match="records no tokenizer.*--tokenizer"):
        export_hf(old, str(tmp_path / "out"))
    assert export_hf(old, str(tmp_path / "out"), tokenizer_uri=tokenizer_path)["tokenizer"] == tokenizer_path
    with pytest.raises(UserError, match="not a LoRA checkpoint"):
        export_hf(old, str(tmp_path / "out"), "peft", tokenizer_uri=tokenizer_path)

    # A unigram tokenizer: transformers breaks ties between equal segmentations otherwise.
    from llm.tokenizer.spm import train_sentencepiece

    unigram = tmp_path / "unigram.model"
    unigram.write_bytes(train_sentencepiece(sft_texts()[::10], VOCAB, "unigram", character_coverage=0.98))
    with pytest.raises(UserError, match="tokenizer.model_type unigram"):
        export_hf(old, str(tmp_path / "out"), tokenizer_uri=str(unigram))

    state_file = tmp_path / "old" / "state.json"
    state = json.loads(state_file.read_text())
    state["model_config"]["rotary"] = True
    state_file.write_text(json.dumps(state))
    with pytest.raises(UserError, match="model.rotary has no GPT-2 equivalent"):
        export_hf(old, str(tmp_path / "out"), tokenizer_uri=tokenizer_path)

    # A tokenizer changed since training is refused, naming the digest.
    moved = tmp_path / "changed.model"
    moved.write_bytes(Path(tokenizer_path).read_bytes())
    ckpt = write_checkpoint(tmp_path / "ckpt", model, str(moved))
    moved.write_bytes(moved.read_bytes() + b"\0")
    with pytest.raises(UserError, match="changed since"):
        export_hf(ckpt, str(tmp_path / "out"))

    # Prefix tuning adds computation GPT-2 has no place for.
    base = write_checkpoint(tmp_path / "base", model, tokenizer_path)
    prefix = tmp_path / "prefix"
    info = {"method": "prefix", "base": base, "base_digest": file_digest((Path(base) / "model.pt").read_bytes()),
            "config": FinetuneConfig(method="prefix").model_dump(mode="json")}
    save_checkpoint(str(prefix), {}, None, 1, model.cfg, TrainConfig(), {"finetune": info}, weights_file=ADAPTER_FILE)
    for fmt in ("hf", "peft"):
        with pytest.raises(UserError, match="prefix fine-tune cannot be exported"):
            export_hf(str(prefix), str(tmp_path / "out"), fmt)


def test_cli_export_hf(tokenizer_path, tmp_path, capsys):
    from flows.cli import main

    ckpt = write_checkpoint(tmp_path / "ckpt", perturbed_model(tiny_config()), tokenizer=None)
    assert main(["export", ckpt, str(tmp_path / "hf"), "--format", "hf", "--tokenizer", tokenizer_path]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["n_inner"], config["activation_function"]) == (2, 32, 96, "gelu")
    assert main(["export", ckpt, str(tmp_path / "hf2"), "--format", "hf"]) == 2  # no tokenizer: a clean error
    assert "--tokenizer" in capsys.readouterr().err


def test_training_records_the_tokenizer_in_state_json(tokenizer_path, tmp_path):
    from llm.train.checkpoint import read_state
    from llm.train.data import write_token_dataset
    from llm.train.loop import checkpoint_to, train
    from llm.train.ray_worker import workload_from
    from tests.unit.train.tiny import counting_docs, tiny_model, tiny_train

    record = tokenizer_record(tokenizer_path)
    assert record == {"uri": str(Path(tokenizer_path).resolve()),
                      "sha256": hashlib.sha256(Path(tokenizer_path).read_bytes()).hexdigest()}
    tokens = str(tmp_path / "tokens")
    write_token_dataset(tokens, {"train": counting_docs(20, 0), "val": counting_docs(4, 1)}, vocab_size=64)
    train_cfg = tiny_train(max_steps=2, eval_every=2, checkpoint_every=2, eval_batches=1, system_metrics=False)
    train(tiny_model(), train_cfg, tokens, report=checkpoint_to(str(tmp_path / "ckpt")), tokenizer=record)
    assert read_state(str(tmp_path / "ckpt"))["tokenizer"] == record
    # Ray Train workers get it through their config.
    workload, _ = workload_from({"model": tiny_model().model_dump(mode="json"), "tokens_uri": tokens,
                                 "train": train_cfg.model_dump(mode="json"), "tokenizer": record})
    assert workload.checkpoint_metadata() == {"tokenizer": record}


@pytest.mark.parametrize("name", ["demo.yaml", "gpt2-small.yaml", "seed-24x1024.yaml"])
def test_every_shipped_config_maps_onto_gpt2_tensor_for_tensor(name):
    """On the meta device: the weights the mapping produces are exactly the parameters, by name and
    shape, of the GPT2LMHeadModel its config.json describes."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from llm.config import load_config
    from llm.export.gpt2 import check_expressible, gpt2_config, gpt2_state_dict

    model_cfg = load_config(Path(__file__).resolve().parents[3] / "configs" / name).model
    cfg = check_expressible(model_cfg.model_copy(update={"vocab_size": model_cfg.vocab_size or VOCAB})
                            .model_dump(mode="json"))
    with torch.device("meta"):
        ours = gpt2_state_dict(GPT(cfg).state_dict(), cfg)
        theirs = GPT2LMHeadModel(GPT2Config(**gpt2_config(cfg, 2, 3, 0, torch.float32))).state_dict()
    theirs.pop("lm_head.weight")  # tied: transformers fills it from the embedding
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
