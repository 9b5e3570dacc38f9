"""The one interface every consumer of a tokenizer uses, whichever library trained it.

Tokenize, training, fine-tuning, evaluation, rating and export only call what `Tokenizer` lists, so a
SentencePiece model and a Hugging Face `tokenizers` model are interchangeable everywhere downstream.
`load_tokenizer` tells the two apart by the stored file's content, so a URI recorded in a checkpoint
is enough to load the right one.
"""

from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

import numpy as np

from llm import storage

#: The libraries `tokenizer.library` selects between.
LIBRARIES = ("sentencepiece", "hf")


@runtime_checkable
class Tokenizer(Protocol):
    """A loaded tokenizer: encode, decode, batch encode, the special ids and the stored model."""

    #: "sentencepiece" or "hf".
    library: str
    #: The serialized model exactly as stored (what its sha256 is taken of).
    model_bytes: bytes
    pad_id: int
    unk_id: int
    bos_id: int
    eos_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def piece_id(self, piece: str) -> int | None:
        """The id of `piece` when the vocabulary holds it as one token (a special token), else None."""

    def id_to_piece(self, token_id: int) -> str: ...

    def special_ids(self) -> dict[str, int]:
        """Every token that is never split, by its text: pad/unk/bos/eos plus user and control tokens."""

    def byte_fallback_ids(self) -> np.ndarray:
        """Ids that stand for one raw byte because no piece covered the text (SentencePiece's
        `<0xNN>`); empty for models whose every token is bytes (byte-level BPE)."""

    def token_dtype(self) -> np.dtype: ...


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32 (what the token files store)."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def tokenizer_from_bytes(model: bytes) -> Tokenizer:
    """The tokenizer serialized in `model`: a Hugging Face tokenizer.json (a JSON object) or a
    SentencePiece model proto (anything else)."""
    if model.lstrip()[:1] == b"{":
        from llm.tokenizer.hf import HFTokenizer

        return HFTokenizer(model)
    from llm.tokenizer.spm import SentencePieceTokenizer

    return SentencePieceTokenizer(model)


def load_tokenizer(uri: str) -> Tokenizer:
    """The tokenizer stored at `uri` (a model file, local or s3://), of either library."""
    return tokenizer_from_bytes(storage.read_bytes(uri))
