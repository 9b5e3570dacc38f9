"""SentencePiece tokenizer: training from an iterator of documents, loading from any URI.

The special ids are the trainer's to choose (pad=0, unk=1, bos=2, eos=3 unless configured) and are
recorded in the model, which is where a loaded tokenizer reads them from.
"""

from __future__ import annotations

import io
import itertools
import re
from typing import Iterable, Iterator

import numpy as np
import sentencepiece as spm

from llm import storage
from llm.config import DEFAULT_SPECIAL_IDS
from llm.errors import UserError
from llm.tokenizer.base import token_dtype

#: The default special ids (`tokenizer.pad_id` ...).


class SentencePieceTokenizer:
    """A loaded SentencePiece model (`llm.tokenizer.base.Tokenizer`)."""

    library = "sentencepiece"

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self.model_bytes = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.pad_id, self.unk_id = self.sp.pad_id(), self.sp.unk_id()
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()

    @classmethod
    def load(cls, uri: str) -> "SentencePieceTokenizer":
        return cls(storage.read_bytes(uri))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def piece_id(self, piece: str) -> int | None:
        """The id of `piece` when the vocabulary holds it as one token (a special token), else None."""
        pid = self.sp.piece_to_id(piece)
        return None if pid == self.unk_id and piece != "<unk>" else int(pid)

    def id_to_piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(int(token_id))

    def special_ids(self) -> dict[str, int]:
        """Control and user-defined pieces (never split) by their text."""
        return {self.sp.id_to_piece(i): i for i in range(self.vocab_size)
                if self.sp.is_control(i) or self.sp.is_unknown(i) or self._user_defined(i)}

    def _user_defined(self, i: int) -> bool:
        # The processor answers is_control/is_byte but not "user defined"; the proto records it.
        if not hasattr(self, "_user_ids"):
            from sentencepiece import sentencepiece_model_pb2 as model_pb2

            proto = model_pb2.ModelProto()
            proto.ParseFromString(self.model_proto)
            user = model_pb2.ModelProto.SentencePiece.USER_DEFINED
            self._user_ids = {i for i, p in enumerate(proto.pieces) if p.type == user}
        return i in self._user_ids

    def byte_fallback_ids(self) -> np.ndarray:
        return np.array([i for i in range(self.vocab_size) if self.sp.is_byte(i)], dtype=np.int64)

    def piece_byte_lengths(self) -> np.ndarray:
        """Bytes of text each id stands for ('▁' as the space it replaced; control pieces and `<unk>` 0)."""
        sp = self.sp
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            if sp.is_byte(i):
                lengths[i] = 1
            elif not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)):
                lengths[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
        return lengths

    def surface_byte_counts(self, text: str, ids: list[int]) -> np.ndarray:
        """Bytes of `text` each of `ids` covers, from the encoder's spans (exact for `<unk>` too)."""
        pieces = self.sp.encode(text, return_type="proto").pieces
        if [p.id for p in pieces] != list(ids):
            raise ValueError("the ids are not this tokenizer's encoding of the text")
        return np.array([p.end - p.begin for p in pieces], dtype=np.int64)  # byte offsets into the text

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts, out_type=int, num_threads=1)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def token_dtype(self) -> np.dtype:
        """uint16 when every id fits, else uint32 (what the token files store)."""
        return token_dtype(self.vocab_size)


def training_lines(docs: Iterable[str], max_len: int) -> Iterator[str]:
    """The sentences SentencePiece trains on: each document's lines, right-stripped, empty ones left
    out, those over `max_len` characters cut into pieces of `max_len` (the trainer would skip them)."""
    # A list per document chained in C: the trainer pulls hundreds of thousands of lines, and a
    # generator frame resumed per line was most of the Python side's cost.
    return itertools.chain.from_iterable(_doc_lines(doc, max_len) for doc in docs)


def _doc_lines(doc: str, max_len: int) -> list[str]:
    lines = [line for line in map(str.rstrip, doc.split("\n")) if line]
    if lines and max(map(len, lines)) > max_len:
        lines = [line[i:i + max_len] for line in lines for i in range(0, len(line), max_len)]
    return lines


def train_sentencepiece(
    docs: Iterable[str],
    vocab_size: int,
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    byte_fallback: bool = True,
    max_sentence_length: int = 16384,
    num_threads: int = 1,
    special_tokens: Iterable[str] = (),
    special_ids: dict[str, int] | None = None,
    input_sentence_size: int = 0,
    shuffle_input_sentence: bool = False,
    seed: int = 0,
    input_files: list[str] | None = None,
) -> bytes:
    """Train a model and return its serialized proto (bytes), deterministic for the same input.

    `special_tokens` become single pieces (the first free ids after pad/unk/bos/eos) wherever they
    occur: the chat template's role markers and any user tokens. `special_ids`: the id of each of
    pad/unk/bos/eos (`DEFAULT_SPECIAL_IDS` by default). `input_sentence_size` caps the sentences (lines)
    loaded (0: all), the first ones or, with `shuffle_input_sentence`, a random choice of them seeded
    by `seed`. `input_files`: local text files holding `docs`' training lines (`training_lines`), one
    per line, which SentencePiece then reads itself, as `spm_train` does (the same model, faster); used
    unless a path holds a comma, which its list of files cannot."""
    model = io.BytesIO()
    ids = {**DEFAULT_SPECIAL_IDS, **(special_ids or {})}
    try:
        _train(docs, model, vocab_size, model_type, character_coverage, byte_fallback, max_sentence_length,
               num_threads, list(special_tokens), ids, input_sentence_size, shuffle_input_sentence, seed,
               input_files if input_files and not any("," in f for f in input_files) else None)
    except RuntimeError as exc:
        match = re.search(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)", str(exc))
        if match:
            raise UserError(
                f"tokenizer.vocab_size={vocab_size} is smaller than the {match.group(2)} pieces the sample "
                f"needs (its characters at character_coverage={character_coverage}, plus special tokens): "
                "raise tokenizer.vocab_size or lower tokenizer.character_coverage") from None
        raise
    if input_files:
        return _without_input_paths(model.getvalue())
    return model.getvalue()


def _train(docs, model, vocab_size, model_type, character_coverage, byte_fallback, max_sentence_length,
           num_threads, special_tokens, ids, input_sentence_size=0, shuffle_input_sentence=False,
           seed=0, input_files=None) -> None:
    spm.set_random_generator_seed(seed)  # the shuffle's choice is then the same on every run
    source = ({"input": ",".join(input_files)} if input_files
              else {"sentence_iterator": training_lines(docs, max_sentence_length)})
    spm.SentencePieceTrainer.train(
        **source,
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=byte_fallback,
        max_sentence_length=max_sentence_length,
        pad_id=ids["pad"],
        unk_id=ids["unk"],
        bos_id=ids["bos"],
        eos_id=ids["eos"],
        pad_piece="<pad>",
        unk_piece="<unk>",
        bos_piece="<s>",
        eos_piece="</s>",
        user_defined_symbols=special_tokens,
        split_digits=True,
        remove_extra_whitespaces=False,  # keep code indentation
        normalization_rule_name="identity",  # the normalize stage already did NFC
        allow_whitespace_only_pieces=True,
        num_threads=num_threads,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=shuffle_input_sentence,
        minloglevel=2,
        hard_vocab_limit=False,
    )


def _without_input_paths(model: bytes) -> bytes:
    # The trainer records the files it read in the model; the paths (scratch folders, temporary copies)
    # are not the model's, and without them the bytes are those the sentence iterator gives.
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    proto.ParseFromString(model)
    del proto.trainer_spec.input[:]
    return proto.SerializeToString()


def vocab_text(tok: SentencePieceTokenizer) -> str:
    """The `.vocab` file beside a model: each piece and its score, one a line, in id order."""
    return "".join(f"{tok.sp.id_to_piece(i)}\t{tok.sp.get_score(i)}\n" for i in range(tok.vocab_size))
