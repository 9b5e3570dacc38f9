"""`tokenizer.num_threads`: the thread count SentencePiece trains with (0: the CPUs the training task
has) and the CPUs the stage's one training task asks its executor for."""

import json
import os

import sentencepiece as spm

from llm.config import TokenizerConfig
from llm.executor import LocalExecutor, task_cpus
from llm.tokenizer.base import tokenizer_from_bytes
from llm.tokenizer.stage import run_tokenizer_training, train_tokenizer
from tests.unit.data.test_stages import make_docs_dataset


def _recorded_threads(monkeypatch) -> list[int]:
    seen = []
    real = spm.SentencePieceTrainer.train

    def train(*args, **kwargs):  # the real trainer, its thread count noted
        seen.append(kwargs["num_threads"])
        return real(*args, **kwargs)

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", train)
    return seen


def test_num_threads_reaches_sentencepiece_and_the_bpe_vocabulary_does_not_depend_on_it(shared_data, monkeypatch):
    texts = [json.loads(line)["text"] for line in (shared_data / "langid_dev.jsonl").open(encoding="utf-8")][:200]
    seen = _recorded_threads(monkeypatch)
    models = [train_tokenizer(texts, TokenizerConfig(vocab_size=500, num_threads=n)) for n in (1, 2, 0)]
    assert seen == [1, 2, task_cpus()]
    assert task_cpus() == len(os.sched_getaffinity(0))  # in-process: the CPUs this process may run on
    # The proto records the trainer's settings (the thread count among them); the vocabulary is the same.
    vocabs = [[(tok.sp.id_to_piece(i), tok.sp.get_score(i)) for i in range(tok.vocab_size)]
              for tok in map(tokenizer_from_bytes, models)]
    assert vocabs[0] == vocabs[1] == vocabs[2]


class _RecordingExecutor(LocalExecutor):
    """Runs in-process and notes the CPUs each map asks for."""

    def __init__(self):
        super().__init__()
        self.asked: list[tuple[str, float | None]] = []

    def map(self, fn, items, desc="", num_cpus=None):
        self.asked.append((desc, num_cpus))
        return super().map(fn, items, desc)


def test_the_training_task_asks_for_num_threads_cpus(tmp_path, monkeypatch):
    docs = str(tmp_path / "docs")
    make_docs_dataset(docs)
    seen = _recorded_threads(monkeypatch)
    ex = _RecordingExecutor()
    run_tokenizer_training(docs, str(tmp_path / "tok"), TokenizerConfig(vocab_size=300, sample_bytes=20000,
                                                                        num_threads=2), ex)
    assert ("tokenizer: train", 2) in ex.asked
    assert all(cpus is None for desc, cpus in ex.asked if desc != "tokenizer: train")  # the sample passes: one each
    assert seen == [2]
