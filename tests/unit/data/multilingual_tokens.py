"""A token dataset made by the real tokenizer and tokenize stages from the development data's
multilingual texts (13 languages), plus texts whose characters only byte fallback encodes."""

from __future__ import annotations

import json
from pathlib import Path

from llm.config import TokenizeConfig, TokenizerConfig
from llm.tokenizer.tokenize import run_tokenize
from llm.executor import LocalExecutor
from llm.tokenizer.stage import run_tokenizer_training
from tests.unit.data.minhash.conftest import write_dataset

EXTRA = ["😀 emoji 🎉🇩🇪 flags", "𠀀𪚥 rare CJK 龘", " leading space, naïve café", "\ttab\r\n\nnewlines\n"]


def multilingual_texts(shared_data: Path) -> list[str]:
    """The language-ID texts (distinct) and `EXTRA`."""
    lines = (shared_data / "langid_dev.jsonl").open(encoding="utf-8")
    return list(dict.fromkeys([json.loads(line)["text"] for line in lines] + EXTRA))


def tokenize_multilingual(root: Path, shared_data: Path, cfg: TokenizeConfig | None = None,
                          shards: int = 2) -> tuple[list[str], dict]:
    """(texts, the token dataset's manifest) under `root`: docs/, tok/ and tokens/ (by default 40% val and
    test)."""
    texts = multilingual_texts(shared_data)
    docs, tok, tokens = (str(root / name) for name in ("docs", "tok", "tokens"))
    write_dataset(docs, texts, shards=shards)
    ex = LocalExecutor()
    # A small sample at low coverage: rare characters of the other texts are left to byte fallback.
    run_tokenizer_training(docs, tok, TokenizerConfig(vocab_size=1000, sample_bytes=30000, character_coverage=0.98), ex)
    cfg = cfg or TokenizeConfig(val_fraction=0.2, test_fraction=0.2)
    return texts, run_tokenize(docs, tok, tokens, cfg, ex)
