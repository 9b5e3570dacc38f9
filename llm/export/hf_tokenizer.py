"""The project's tokenizer as a transformers tokenizer folder (`tokenizer.json`).

A Hugging Face (`tokenizer.library: hf`) tokenizer is its own tokenizer.json, wrapped with its
bos/eos/unk/pad tokens and checked the same way; what follows is about SentencePiece.

transformers builds the fast tokenizer from the .model file's own settings (the project's: BPE with byte
fallback, a dummy prefix, whitespace kept as it is, digits split, the chat markers as
user-defined pieces), so `encode` gives SentencePiece's ids and `decode` its text. One difference is
closed by configuration: a fast tokenizer would read `<s>` or `</s>` typed in the text as the special
token, where SentencePiece reads it as text; `split_special_tokens` makes it read them as text too (the
project adds bos/eos by id, never from text). Before anything is written every piece of the vocabulary,
as text, is encoded both ways: a tokenizer the conversion cannot reproduce is refused, not exported.
Unigram tokenizers are refused up front (ties between equal segmentations break otherwise). Decoding
differs only for byte tokens that form no valid UTF-8: both give replacement characters, not in the
same places.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from llm.errors import UserError
from llm.tokenizer.base import Tokenizer

TOKENIZER_FILE, TOKENIZER_CONFIG_FILE = "tokenizer.json", "tokenizer_config.json"
#: A few texts beside the vocabulary's pieces for the self-check: spaces, indentation, digits, a byte-fallback
#: character, and bos/eos written as text.
PROBES = ("  two leading spaces", " one", "def f():\n    return 1  \n\ttab", "digits 12345 and 3.14",
          "emoji \U0001f389 and \u00e9\u00e8 \u4e2d\u6587", "<s>text</s>", "a  b   c", "trailing  ")


def tokenizer_files(tokenizer: Tokenizer, model_max_length: int | None = None) -> dict[str, bytes]:
    """`tokenizer.json` and `tokenizer_config.json` (name -> bytes) of a fast tokenizer that encodes and
    decodes like `tokenizer`; `model_max_length`: the model's context, so over-long inputs are flagged."""
    backend = _backend()
    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    roles = {f"{r}_token": tokenizer.id_to_piece(getattr(tokenizer, f"{r}_id")) for r in ("bos", "eos", "unk", "pad")}
    wrapped = backend(tokenizer_object=_backend_tokenizer(tokenizer), split_special_tokens=True,
                      clean_up_tokenization_spaces=False, **roles, **kwargs)
    _check_special_ids(tokenizer, wrapped)
    _check_same_ids(tokenizer, wrapped)
    with tempfile.TemporaryDirectory(prefix="llmpipe-hf-tokenizer-") as tmp:
        wrapped.save_pretrained(tmp)
        config = json.loads((Path(tmp) / TOKENIZER_CONFIG_FILE).read_text(encoding="utf-8"))
        # The public class name, which transformers 4 resolves too (5 saves its internal alias).
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        return {TOKENIZER_FILE: (Path(tmp) / TOKENIZER_FILE).read_bytes(),
                TOKENIZER_CONFIG_FILE: (json.dumps(config, indent=2) + "\n").encode()}


def _backend():
    # Nothing to download: the conversion works from the .model bytes alone.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        raise UserError("export --format hf/peft needs the transformers package for the tokenizer: "
                        "pip install 'llmpipe[hf]'") from None
    return PreTrainedTokenizerFast


def _backend_tokenizer(tokenizer: Tokenizer):
    """The `tokenizers.Tokenizer` to wrap: an hf-library tokenizer's own tokenizer.json, unchanged."""
    if tokenizer.library == "hf":
        from tokenizers import Tokenizer as RustTokenizer

        return RustTokenizer.from_str(tokenizer.model_bytes.decode("utf-8"))
    return _convert(tokenizer.model_bytes)


def _convert(model_proto: bytes):
    """A `tokenizers.Tokenizer` built from the SentencePiece model's own settings."""
    from transformers.convert_slow_tokenizer import SentencePieceExtractor, SpmConverter

    with tempfile.TemporaryDirectory(prefix="llmpipe-spm-") as tmp:
        path = Path(tmp) / "tokenizer.model"
        path.write_bytes(model_proto)
        proto = SentencePieceExtractor(str(path)).proto
    if proto.trainer_spec.model_type != 2:
        # Measured: a fast Unigram breaks ties between equally scored segmentations otherwise than
        # SentencePiece ("``" + "`" against "`" + "``"), 5 of 1,415 real texts got other ids.
        raise UserError("tokenizer.model_type unigram cannot be exported with the same ids (transformers' Unigram "
                        "breaks ties between equal segmentations differently): only bpe tokenizers export")
    # BPE: the vocabulary by id; the merges follow from the piece scores.
    return SpmConverter.build_tokenizer_from_spm_proto(proto, {piece.piece: i for i, piece in enumerate(proto.pieces)})


def _check_same_ids(tokenizer: Tokenizer, wrapped) -> None:
    # Every token of the vocabulary as text, but the roles and byte-fallback pieces (no text of their own).
    skip = {tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, *tokenizer.byte_fallback_ids().tolist()}
    ids = [i for i in range(tokenizer.vocab_size) if i not in skip]
    if tokenizer.library == "hf":
        texts = [tokenizer.decode([i]) for i in ids]
    else:
        texts = [tokenizer.id_to_piece(i).replace("\u2581", " ") for i in ids]
    for text in [*texts, *PROBES]:
        ours, theirs = tokenizer.encode(text), wrapped.encode(text, add_special_tokens=False)
        if ours != theirs:
            raise UserError(f"the tokenizer cannot be exported exactly: transformers encodes {text!r} as {theirs}, "
                            f"the project as {ours}")


def _check_special_ids(tokenizer: Tokenizer, wrapped) -> None:
    for name in ("pad", "unk", "bos", "eos"):
        if getattr(wrapped, f"{name}_token_id") != getattr(tokenizer, f"{name}_id"):
            raise UserError(f"the tokenizer's {name} piece is not at id {getattr(tokenizer, f'{name}_id')}: "
                            "not a tokenizer of this project")
