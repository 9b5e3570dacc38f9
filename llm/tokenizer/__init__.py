"""Tokenizer training and loading (SentencePiece or Hugging Face tokenizers, one interface)."""

from llm.tokenizer.base import Tokenizer, load_tokenizer, tokenizer_from_bytes
from llm.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece

__all__ = ["SentencePieceTokenizer", "Tokenizer", "load_tokenizer", "tokenizer_from_bytes", "train_sentencepiece"]
