"""Tokenizer training and loading."""

from llm.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece

__all__ = ["SentencePieceTokenizer", "train_sentencepiece"]
