"""The tokenizer stage's training step on its own: the library's trainer on an iterable of documents.

Kept apart from the stage (`llm.tokenizer.stage`), whose storage, lineage and card modules a training
task does not need to import.
"""

from __future__ import annotations

from llm.config import TokenizerConfig


def train_tokenizer(texts, cfg: TokenizerConfig) -> bytes:
    """The serialized tokenizer `cfg` asks for, trained on `texts` (an iterable of documents)."""
    tokens = [*cfg.special_tokens, *cfg.user_tokens]
    if cfg.library == "hf":
        from llm.tokenizer.hf import train_hf

        return train_hf(texts, cfg.vocab_size, cfg.model_type, cfg.special_ids(), tokens)
    from llm.executor import task_cpus
    from llm.tokenizer.spm import train_sentencepiece

    def train(docs, input_files=None) -> bytes:
        return train_sentencepiece(docs, cfg.vocab_size, cfg.model_type, cfg.character_coverage, cfg.byte_fallback,
                                   cfg.max_sentence_length, num_threads=cfg.num_threads or task_cpus(),
                                   special_tokens=tokens, special_ids=cfg.special_ids(),
                                   input_sentence_size=cfg.input_sentence_size,
                                   shuffle_input_sentence=cfg.shuffle_input_sentence, seed=cfg.seed,
                                   input_files=input_files)

    if getattr(texts, "are_lines", False):  # a sample written as training lines: spm_train's own input path
        with texts.local_files() as paths:
            return train(texts, paths)
    return train(texts)
