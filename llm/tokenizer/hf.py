"""Hugging Face `tokenizers` models (byte-level BPE, WordPiece, Unigram) behind the project's interface.

The stored file is the library's own `tokenizer.json`, so any tool that reads Hugging Face tokenizers
(transformers, datatrove) reads it unchanged. That format has no field for "this token is bos", so the
roles are found by the tokens' text: the names below are what the project's trainer writes, in the
two conventions users meet (`<s>`-style and BERT's `[CLS]`-style).
"""

from __future__ import annotations

import json
from typing import Iterable

import numpy as np
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as _RustTokenizer

from llm.config import DEFAULT_SPECIAL_IDS, ROLE_TEXTS
from llm.errors import UserError
from llm.tokenizer.base import token_dtype

#: For each role, the texts a special token of that role may have, first match wins: the trainers'
#: (`ROLE_TEXTS`), then what other tokenizers call it.
_OTHER_ROLE_TEXTS = {"pad": (), "unk": (), "bos": ("<bos>",), "eos": ("<eos>", "<|endoftext|>")}
ROLE_PIECES = {role: (ROLE_TEXTS["angle"][role], ROLE_TEXTS["bert"][role]) + other
               for role, other in _OTHER_ROLE_TEXTS.items()}


class HFTokenizer:
    """A loaded Hugging Face tokenizer (`llm.tokenizer.base.Tokenizer`)."""

    library = "hf"

    def __init__(self, model_bytes: bytes):
        self.model_bytes = model_bytes
        self.tk = _RustTokenizer.from_str(model_bytes.decode("utf-8"))
        # `<s>` or `[CLS]` typed in a text is text, as SentencePiece reads it: the roles are added by id.
        # User and chat tokens are added as non-special tokens, so they are still matched whole.
        self.tk.encode_special_tokens = True
        self._encode_ids = getattr(self.tk, "encode_batch_fast", self.tk.encode_batch)  # tokenizers >= 0.20.1
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
        # The ids only: `encode_batch_fast` skips the character offsets (a third of the encoding's CPU
        # time, measured), which `byte_spans` asks `encode_batch` for where it needs them.
        return [e.ids for e in self._encode_ids(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=False)

    def piece_id(self, piece: str) -> int | None:
        found = self.tk.token_to_id(piece)
        return None if found is None else int(found)

    def id_to_piece(self, token_id: int) -> str:
        return self.tk.id_to_token(int(token_id))

    def special_ids(self) -> dict[str, int]:
        return {t.content: i for i, t in sorted(self.tk.get_added_tokens_decoder().items())}

    @property
    def byte_level(self) -> bool:
        """Whether every token is bytes (byte-level BPE: its pieces spell bytes in GPT-2's alphabet)."""
        return type(self.tk.pre_tokenizer).__name__ == "ByteLevel"

    def piece_byte_lengths(self) -> np.ndarray | None:
        """Bytes of text each id stands for (roles 0), for byte-level BPE; None for other models, whose
        normalizer changes the text (`byte_spans` counts those)."""
        if not self.byte_level:
            return None
        byte_of = {c: b for b, c in _gpt2_byte_chars().items()}
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for piece, i in self.tk.get_vocab(with_added_tokens=False).items():
            lengths[i] = sum(1 for c in piece if c in byte_of)
        for i, token in self.tk.get_added_tokens_decoder().items():
            lengths[i] = 0 if token.special else len(token.content.encode("utf-8"))
        return lengths

    def byte_spans(self, texts: list[str], ids: list[list[int]]) -> list[np.ndarray]:
        """Bytes of each text each of its ids covers, from the encoding's character offsets: every byte
        goes to exactly one token (the first token whose span starts at or before it; bytes the
        normalizer dropped, such as whitespace, go to the token before them), so a text's counts sum to
        its UTF-8 length whenever it has a token."""
        out = []
        for text, want, enc in zip(texts, ids, self.tk.encode_batch(texts, add_special_tokens=False)):
            if enc.ids != list(want):
                raise ValueError("the ids are not this tokenizer's encoding of the text")
            if not enc.ids:
                out.append(np.zeros(0, dtype=np.int64))
                continue
            char_bytes = np.fromiter((len(c.encode("utf-8")) for c in text), dtype=np.int64, count=len(text))
            byte_at = np.concatenate([[0], np.cumsum(char_bytes)])  # byte offset of each character offset
            starts = np.maximum.accumulate(byte_at[[s for s, _ in enc.offsets]])
            starts[0] = 0
            out.append(np.diff(np.append(starts, byte_at[-1])))
        return out

    def byte_fallback_ids(self) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)

    def token_dtype(self) -> np.dtype:
        return token_dtype(self.vocab_size)


#: What `train_hf` names each role, by model type (wordpiece follows BERT); all are in ROLE_PIECES.
TRAINED_ROLE_PIECES = {"bpe": ROLE_TEXTS["angle"], "unigram": ROLE_TEXTS["angle"], "wordpiece": ROLE_TEXTS["bert"]}
#: BERT's fifth special token, which every wordpiece tokenizer gets (after the roles).
MASK = "[MASK]"


def train_hf(docs: Iterable[str], vocab_size: int, model_type: str = "bpe", special_ids: dict[str, int] | None = None,
             special_tokens: Iterable[str] = ()) -> bytes:
    """Train a Hugging Face tokenizer and return its tokenizer.json (bytes), the same bytes for the
    same input.

    - `bpe`: byte-level BPE as GPT-2 (ByteLevel pre-tokenizer and decoder, all 256 bytes in the initial
      alphabet): every text encodes, and decodes back exactly.
    - `wordpiece`: BERT's (BertNormalizer without lowercasing or accent stripping, BertPreTokenizer,
      `##` continuations, WordPiece decoder). It normalises away: control characters, every run of
      whitespace (words are decoded joined by one space, tabs and newlines included), the space before
      punctuation and around CJK characters (each CJK character is its own word); a word with a
      character the vocabulary lacks becomes [UNK] whole. [MASK] is added after the roles.
    - `unigram`: SentencePiece-style Unigram over Metaspace words ('▁' for the space, no dummy prefix,
      nothing normalised): text decodes back exactly except characters the sample lacked, which become
      <unk>.

    `special_ids`: the id of each of pad/unk/bos/eos, a permutation of 0-3 (the trainer gives special
    tokens ids in the order it is given them). `special_tokens` follow at 4, 5, ...: one id each, never
    split, decoded unchanged.
    """
    ids = {**DEFAULT_SPECIAL_IDS, **(special_ids or {})}
    if sorted(ids.values()) != [0, 1, 2, 3]:
        raise ValueError(f"special ids must be 0, 1, 2 and 3 in some order, got {ids}")
    roles = TRAINED_ROLE_PIECES[model_type]
    extra = list(dict.fromkeys([*([MASK] if model_type == "wordpiece" else []), *special_tokens]))
    specials = [roles[r] for r in sorted(ids, key=ids.get)] + [t for t in extra if t not in roles.values()]
    if model_type == "bpe":
        tk = _RustTokenizer(models.BPE(unk_token=roles["unk"]))
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tk.train_from_iterator(docs, trainer=trainer)
    elif model_type == "wordpiece":
        tk = _train_wordpiece(docs, vocab_size, specials, roles["unk"])
    elif model_type == "unigram":
        tk = _train_unigram(docs, vocab_size, specials, ids["unk"])
    else:
        raise ValueError(f"model_type must be bpe, wordpiece or unigram, got {model_type!r}")
    model = _user_tokens_not_special(tk.to_str(), len(roles))
    loaded = HFTokenizer(model)
    found = {"pad": loaded.pad_id, "unk": loaded.unk_id, "bos": loaded.bos_id, "eos": loaded.eos_id}
    if found != ids:
        # A user token spelled like another convention's role token (`<s>` in a wordpiece tokenizer).
        raise UserError(f"tokenizer: the trained roles {found} are not the configured {ids}: a token of "
                        "special_tokens/user_tokens is read as a role token, rename it")
    return model


#: Marks a word's first piece while training wordpiece (a private-use character, removed from the text).
_WORD_START = "\ue000"


def _train_wordpiece(docs: Iterable[str], vocab_size: int, specials: list[str], unk: str) -> _RustTokenizer:
    # tokenizers' WordPieceTrainer numbers the `##` pieces in the order it meets them in a randomly
    # seeded hash map, and ties between equally frequent merges follow those numbers, so two trainings
    # differ. Plain BPE numbers its alphabet in sorted order and is deterministic, so it is trained on
    # the BERT-normalised words with the first character marked: a piece with the mark starts a word,
    # one without is a `##` continuation, which is WordPiece's vocabulary.
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                            lowercase=False)
    pre = pre_tokenizers.BertPreTokenizer()

    def marked(doc: str) -> str:
        words = pre.pre_tokenize_str(normalizer.normalize_str(doc))
        return " ".join(_WORD_START + w.replace(_WORD_START, "") for w, _ in words)

    bpe = _RustTokenizer(models.BPE(unk_token=unk))
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bpe.train_from_iterator((marked(d) for d in docs),
                            trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False))
    learned = sorted(bpe.get_vocab().items(), key=lambda kv: kv[1])[len(specials):]
    vocab = dict.fromkeys(specials)
    for piece, _ in learned:  # the alphabet first: every character both starts and continues a word
        if len(piece) == 1 and piece != _WORD_START:
            vocab.update(dict.fromkeys((piece, "##" + piece)))
    for piece, _ in learned:
        if piece != _WORD_START:
            vocab.setdefault(piece[1:] if piece.startswith(_WORD_START) else "##" + piece)
    tk = _RustTokenizer(models.WordPiece({p: i for i, p in enumerate(list(vocab)[:vocab_size])}, unk_token=unk))
    tk.normalizer = normalizer
    tk.pre_tokenizer = pre
    tk.decoder = decoders.WordPiece()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tk


#: Decimals unigram scores keep (see `_train_unigram`).
_SCORE_DECIMALS = 8
_NEVER = -1e6


def _train_unigram(docs: Iterable[str], vocab_size: int, specials: list[str], unk_id: int) -> _RustTokenizer:
    # tokenizers' UnigramTrainer sums over its words in the order of a randomly seeded hash map, so two
    # trainings find the same pieces with scores that differ in the last bits (measured: ~1e-15), and
    # it appends the characters no piece covers with made-up scores (each 1e-4 below the last) in that
    # map's order. The scores are rounded, the pieces ordered by (score, text), and the appended
    # characters (the tail of single characters) given their scores in the order of their text.
    tk = _RustTokenizer(models.Unigram())
    tk.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    tk.decoder = decoders.Metaspace(prepend_scheme="never")
    tk.train_from_iterator(docs, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token=specials[unk_id], show_progress=False))
    trained = json.loads(tk.to_str())["model"]["vocab"]
    # The special tokens are in the model's vocabulary too: a score no segmentation picks keeps `<s>`
    # typed in a text from becoming one piece (it is text, as the roles are added by id).
    head = [(p, _NEVER) for p in specials]
    rest = sorted(((p, round(s, _SCORE_DECIMALS)) for p, s in trained[len(specials):]), key=lambda ps: (-ps[1], ps[0]))
    tail = len(rest)
    while tail and len(rest[tail - 1][0]) == 1:
        tail -= 1
    rest[tail:] = zip(sorted(p for p, _ in rest[tail:]), [s for _, s in rest[tail:]])
    tk.model = models.Unigram(head + rest, unk_id=unk_id, byte_fallback=False)
    return tk


def _user_tokens_not_special(tokenizer_json: str, roles: int) -> bytes:
    # The trainer adds every token it is given as special; past the roles they are plain added tokens,
    # matched whole in text while the roles, read as text (`encode_special_tokens`), never are.
    data = json.loads(tokenizer_json)
    for token in data["added_tokens"]:
        if token["id"] >= roles:
            token["special"] = False
    return json.dumps(data, ensure_ascii=False).encode("utf-8")


def _gpt2_byte_chars() -> dict[int, str]:
    """GPT-2's table of the printable character that stands for each byte (what ByteLevel writes)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars
