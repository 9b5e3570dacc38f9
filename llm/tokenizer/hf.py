"""Hugging Face `tokenizers` models (byte-level BPE, WordPiece, Unigram) behind the project's interface.

The stored file is the library's own `tokenizer.json`, so any tool that reads Hugging Face tokenizers
(transformers, datatrove) reads it unchanged. That format has no field for "this token is bos", so the
roles are found by the tokens' text: the names below are what the project's trainer writes, in the
two conventions users meet (`<s>`-style and BERT's `[CLS]`-style).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from tokenizers import Tokenizer as _RustTokenizer

from llm.tokenizer.base import token_dtype

#: For each role, the texts a special token of that role may have, first match wins.
ROLE_PIECES = {
    "pad": ("<pad>", "[PAD]"),
    "unk": ("<unk>", "[UNK]"),
    "bos": ("<s>", "[CLS]", "<bos>"),
    "eos": ("</s>", "[SEP]", "<eos>", "<|endoftext|>"),
}


class HFTokenizer:
    """A loaded Hugging Face tokenizer (`llm.tokenizer.base.Tokenizer`)."""

    library = "hf"

    def __init__(self, model_bytes: bytes):
        self.model_bytes = model_bytes
        self.tk = _RustTokenizer.from_str(model_bytes.decode("utf-8"))
        self._special = {t.content: i for i, t in self.tk.get_added_tokens_decoder().items() if t.special}
        roles = {}
        for role, names in ROLE_PIECES.items():
            found = next((self._special[n] for n in names if n in self._special), None)
            if found is None:
                raise ValueError(f"the tokenizer has no {role} token (one of {', '.join(names)})")
            roles[role] = found
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = (roles[r] for r in ("pad", "unk", "bos", "eos"))

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=False)

    def piece_id(self, piece: str) -> int | None:
        found = self.tk.token_to_id(piece)
        return None if found is None else int(found)

    def id_to_piece(self, token_id: int) -> str:
        return self.tk.id_to_token(int(token_id))

    def special_ids(self) -> dict[str, int]:
        return {t.content: i for i, t in sorted(self.tk.get_added_tokens_decoder().items())}

    def byte_fallback_ids(self) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)

    def token_dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)
