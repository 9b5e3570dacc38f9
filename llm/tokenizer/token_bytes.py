"""How many UTF-8 bytes of the original text each token stands for: what bits per byte divides by.

Loss per token depends on the tokenizer; loss per byte of text does not. Scoring any run of tokens in
bits per byte needs, for each token, the bytes of text it encodes, so that a window's bytes are the sum
over the tokens it scores, exactly, wherever the window starts or ends (mid-document included).

A SentencePiece piece stands for its own text with '▁' read as the space byte it replaced; a
byte-fallback piece (`<0xE2>`) for one byte; control pieces (bos, eos, pad) for none. Two cases make a
piece's length differ from the text it covers in one document, and both are settled per document:

- the dummy prefix: SentencePiece puts a '▁' before every text it encodes (`add_dummy_prefix`), so the
  first piece of a document carries one space the text does not have; it is not counted.
- `<unk>` (a model trained without byte fallback): one id for any unknown text; such a document's
  counts are taken from the encoder's own byte spans instead.

A byte-level BPE token (Hugging Face) stands for the bytes its characters spell in GPT-2's byte table,
exactly. WordPiece and Unigram (Hugging Face) normalise the text (whitespace, `##`, `<unk>`), so their
counts always come from the encoding's character offsets turned into byte offsets, each byte of the
text given to exactly one token.

So the counts of a document always sum to `len(text.encode("utf-8"))`, which `token_byte_counts`
checks; the one exception is a text that encodes to no token at all (only whitespace, for WordPiece),
which has no token to carry its bytes.
"""

from __future__ import annotations

import numpy as np

from llm.tokenizer.base import Tokenizer

#: dtype of the per-token byte counts the tokenize stage writes (a piece is at most a few dozen bytes;
#: a special token up to 64 characters, so up to 256 bytes, more than uint8 holds).
BYTES_DTYPE = np.dtype("<u2")


def piece_byte_lengths(tok: Tokenizer) -> np.ndarray | None:
    """Bytes of text each id of the vocabulary stands for (int64, one per id; `<unk>` counts 0), or None
    where a token's bytes depend on the text it came from (Hugging Face WordPiece, Unigram)."""
    return tok.piece_byte_lengths()


def dummy_prefix_bytes(tok: Tokenizer, lengths: np.ndarray) -> int:
    """Bytes the encoder adds before a text (1 for SentencePiece's dummy prefix space, else 0)."""
    return int(lengths[tok.encode("a")].sum()) - 1


class TokenByteCounter:
    """Per-token byte counts of documents encoded by one tokenizer (the table is built once)."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.lengths = piece_byte_lengths(tok)
        self.prefix = 0 if self.lengths is None else dummy_prefix_bytes(tok, self.lengths)

    def counts(self, text: str, ids: list[int]) -> np.ndarray:
        """Bytes of `text` each of `ids` (its encoding, without bos/eos) stands for; they sum to
        `len(text.encode("utf-8"))`. A ValueError when they cannot (ids of another text)."""
        return self.counts_batch([text], [ids])[0]

    def counts_batch(self, texts: list[str], ids: list[list[int]]) -> list[np.ndarray]:
        """`counts` of each text, looked up for the whole batch at once (a fraction of encoding's cost)."""
        if not texts:
            return []
        if self.lengths is None:
            return self._checked(texts, ids, self.tok.byte_spans(texts, ids))
        sizes = np.fromiter((len(d) for d in ids), dtype=np.int64, count=len(ids))
        starts = np.concatenate([[0], np.cumsum(sizes)])
        flat = self.lengths[np.fromiter((t for d in ids for t in d), dtype=np.int64, count=int(starts[-1]))]
        if self.prefix:
            flat[starts[:-1][sizes > 0]] -= self.prefix  # each non-empty document's first piece
        # A trailing 0 keeps every start a valid index; reduceat gives an empty document one value, not 0.
        sums = np.where(sizes > 0, np.add.reduceat(np.append(flat, 0), starts[:-1]), 0)
        out = np.split(flat, starts[1:-1])
        for i, text in enumerate(texts):
            if sums[i] != len(text.encode("utf-8")) or (sizes[i] and out[i].min() < 0):
                out[i] = self._checked([text], [ids[i]], [self._surface_counts(text, ids[i])])[0]
        return out

    def _surface_counts(self, text: str, ids: list[int]) -> np.ndarray:
        # The encoder's spans over the original text: exact for `<unk>` too, slower than the table.
        if self.tok.library == "hf":
            return self.tok.byte_spans([text], [ids])[0]
        return self.tok.surface_byte_counts(text, ids)

    @staticmethod
    def _checked(texts: list[str], ids: list[list[int]], counts: list[np.ndarray]) -> list[np.ndarray]:
        for text, doc, c in zip(texts, ids, counts):
            expected = len(text.encode("utf-8"))
            if doc and int(c.sum()) != expected:
                raise ValueError(f"token byte counts sum to {int(c.sum())}, the text has {expected} bytes")
        return counts
