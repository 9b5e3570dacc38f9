"""A tiny model trained briefly on real quiz text, with its tokenizer and the multiple-choice task
made from the same questions, shared by the downstream-task tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

#: Capitals of European countries and of US states, from bsdgames' quiz(6): 110 questions.
CATEGORIES = ("quiz europe:", "quiz state: given the state, give the capital")
STEPS = 300


@dataclass(frozen=True)
class QuizModel:
    """Paths: the checkpoint, its tokenizer (.model), the task folder holding `capitals.jsonl`, its
    token dataset, and the training texts."""

    checkpoint: str
    tokenizer: str
    tasks_dir: str
    tokens: str
    texts: list[str]


@pytest.fixture(scope="session")
def quiz_model(tmp_path_factory, shared_data) -> QuizModel:
    import torch

    from llm.config import ModelConfig, TrainConfig
    from llm.eval.task_builders import build_choice_task
    from llm.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece
    from llm.train.data import write_token_dataset
    from llm.train.loop import checkpoint_to, train

    root = tmp_path_factory.mktemp("quiz-model")
    rows = [json.loads(line) for line in (shared_data / "eval" / "quiz_bsdgames.jsonl").read_text().splitlines()]
    qa = root / "capitals_qa.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in rows if r["context"].startswith(CATEGORIES)))
    tasks = root / "tasks"
    build_choice_task(qa, tasks / "capitals.jsonl")
    examples = [json.loads(line) for line in (tasks / "capitals.jsonl").read_text().splitlines()]
    # The model reads each question with its right answer, as the task will put it.
    texts = [f"{e['context']} {e['choices'][e['gold']]}" for e in examples]
    tokenizer = SentencePieceTokenizer(train_sentencepiece(texts, 600))
    (root / "spm.model").write_bytes(tokenizer.model_proto)
    docs = [[tokenizer.bos_id, *ids, tokenizer.eos_id] for ids in tokenizer.encode_batch(texts)]
    write_token_dataset(str(root / "tokens"), {"train": docs, "val": docs[:8], "test": docs[:40]},
                        vocab_size=tokenizer.vocab_size)
    model_cfg = ModelConfig(layers=2, hidden_size=64, attention_heads=4, context_length=32,
                            vocab_size=tokenizer.vocab_size)
    train_cfg = TrainConfig(num_workers=1, batch_size=16, micro_batch_size=16, learning_rate=1e-2, warmup_steps=10,
                            max_steps=STEPS, eval_every=STEPS, eval_batches=1, checkpoint_every=STEPS,
                            log_every=100, system_metrics=False)
    torch.set_num_threads(2)
    train(model_cfg, train_cfg, str(root / "tokens"), report=checkpoint_to(str(root / "ckpt")))
    return QuizModel(str(root / "ckpt"), str(root / "spm.model"), str(tasks), str(root / "tokens"), texts)
