"""The held-out response loss of a fine-tune in bits per byte of the responses' text: the training loop
records it before and after, over exactly the responses it scored."""

import json
import math

import torch

from llm.config import CHAT_SPECIAL_TOKENS, ChatTemplateConfig, FinetuneConfig, ModelConfig, SftDataConfig, TrainConfig
from llm.finetune.packing import IGNORE, val_batches, val_response_bytes
from llm.finetune.sft_data import prepare_sft
from llm.finetune.workload import FinetuneWorkload, load_base
from llm.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece
from llm.train.checkpoint import read_state
from llm.train.data import write_token_dataset
from llm.train.loop import checkpoint_to, run_workload, train

T = 64


def test_fine_tune_records_response_bits_per_byte_before_and_after(shared_data, tmp_path):
    rows = [json.loads(line) for line in (shared_data / "sft_dev.jsonl").open(encoding="utf-8")][::40]
    tok = SentencePieceTokenizer(train_sentencepiece([r["prompt"] + "\n" + r["response"] for r in rows], 800,
                                                     character_coverage=0.98, special_tokens=CHAT_SPECIAL_TOKENS))
    docs = [[tok.bos_id, *ids, tok.eos_id] for ids in tok.encode_batch([r["response"] for r in rows])]
    write_token_dataset(str(tmp_path / "tokens"), {"train": docs, "val": docs[:10]}, vocab_size=tok.vocab_size)
    model_cfg = ModelConfig(layers=1, hidden_size=32, attention_heads=2, context_length=T, vocab_size=tok.vocab_size)
    small = dict(num_workers=1, batch_size=4, micro_batch_size=4, max_steps=2, warmup_steps=1, eval_every=2,
                 eval_batches=2, checkpoint_every=2, system_metrics=False)
    train(model_cfg, TrainConfig(**small), str(tmp_path / "tokens"), report=checkpoint_to(str(tmp_path / "base")))
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n" for r in rows))
    ft = FinetuneConfig.model_validate({"method": "lora", "data": {"path": str(sft), "val_fraction": 0.3},
                                        "train": {**small, "learning_rate": 1e-2}})
    examples = prepare_sft(SftDataConfig(path=str(sft), val_fraction=0.3), ChatTemplateConfig(), tok, T)
    examples.save(str(tmp_path / "examples.npz"))
    _, digest = load_base(str(tmp_path / "base"), None)
    workload = FinetuneWorkload(ft, str(tmp_path / "base"), digest, str(tmp_path / "examples.npz"))
    run_workload(workload, ft.train, device=torch.device("cpu"), report=checkpoint_to(str(tmp_path / "ft")))

    state = read_state(str(tmp_path / "ft"))
    scored = list(val_batches(examples.val, T, 4, 2, pack=ft.data.pack, pad_id=examples.pad_id))
    tokens = sum(int((b.targets != IGNORE).sum()) for b in scored)
    nbytes = val_response_bytes(examples.val, T, 4, 2, pack=ft.data.pack)
    assert nbytes > tokens  # bytes of the responses, not tokens
    for loss, bpb in ((state["initial_val_loss"], state["initial_val_bpb"]), (state["val_loss"], state["val_bpb"])):
        assert math.isclose(bpb, loss * tokens / (math.log(2) * nbytes), rel_tol=1e-9)
