"""Content filtering: a URL domain block list and a word list for adult or abusive content.

Both lists become one RE2 pattern each and run over the whole batch: a domain matches itself and its
subdomains; words match whole words, case-insensitively. Only the number of matches is stored
(`content_blocked_words`, `content_blocked_domain`): the matched terms are never logged or stored.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llm import storage
from llm.config import ContentConfig
from llm.data.filtering import Rule, applies_to, scatter, split_by_rules, with_columns
from llm.data.steps import StepOutput
from llm.errors import UserError

_HOST = r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^@/?#]*@)?([^/:?#]+)"


def read_list(uri: str) -> list[str]:
    """Entries of a list file: one a line, blank lines and `#` comments skipped, lower-cased."""
    lines = storage.read_text(uri).splitlines()
    return sorted({ln.split("#", 1)[0].strip().lower() for ln in lines} - {""})


def package_word_list() -> list[str]:
    """The word list that ships with the `better-profanity` package, read as a file: the package is
    located, not imported (importing it builds every leetspeak variant of every word, which this step
    does not use), and nothing is fetched."""
    spec = importlib.util.find_spec("better_profanity")
    if spec is None or spec.origin is None:
        raise UserError("data.content.word_list=better_profanity needs the `better-profanity` package "
                         "(pip install better-profanity)")
    return read_list(str(Path(spec.origin).parent / "profanity_wordlist.txt"))


def words_pattern(words: list[str]) -> str | None:
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return r"(?i)(?:^|[^\pL\pN_])(?:" + alternatives + r")(?:$|[^\pL\pN_])"


def domains_pattern(domains: list[str]) -> str | None:
    if not domains:
        return None
    return r"(?i)(?:^|\.)(?:" + "|".join(re.escape(d.strip(".")) for d in domains) + r")\.?$"


class ContentStep:
    """Drops documents from blocked domains and documents with more blocked-word matches than allowed."""

    name = "content"
    signal_fields = [pa.field("content_blocked_domain", pa.int64()), pa.field("content_blocked_words", pa.int64())]

    def __init__(self, cfg: ContentConfig):
        self.cfg = cfg
        domains = read_list(cfg.blocked_domains_file) if cfg.blocked_domains_file else []
        if cfg.word_list == "file":
            if not cfg.blocked_words_file:
                raise UserError("data.content.word_list=file needs data.content.blocked_words_file")
            words = read_list(cfg.blocked_words_file)
        elif cfg.word_list == "better_profanity":
            words = package_word_list()
        else:
            words = []
        self.domains = domains_pattern(domains)
        self.words = words_pattern(words)
        self.rules = [Rule("content_blocked_domain", "content_blocked_domain", "max", 0),
                      Rule("content_blocked_words", "content_blocked_words", "max", float(cfg.max_blocked_words))]

    def signals(self, docs: pa.Table) -> dict[str, np.ndarray]:
        n = docs.num_rows
        blocked = np.zeros(n, np.int64)
        if self.domains:
            host = _hosts(docs.column("url"))
            blocked = pc.fill_null(pc.match_substring_regex(host, self.domains), False).to_numpy(
                zero_copy_only=False).astype(np.int64)
        words = np.zeros(n, np.int64)
        if self.words:
            # Matches share their delimiter with the next one; counting non-overlapping hits undercounts
            # adjacent repeats by at most half, which is fine for a threshold on "any" or "many".
            words = pc.count_substring_regex(docs.column("text"), self.words).to_numpy(
                zero_copy_only=False).astype(np.int64)
        return {"content_blocked_domain": blocked, "content_blocked_words": words}

    def apply(self, docs: pa.Table) -> StepOutput:
        rows = applies_to(docs, self.cfg.sources)
        sub = docs.take(pa.array(rows, pa.int64()))
        values = self.signals(sub) if len(rows) else {}
        n = docs.num_rows
        docs = with_columns(docs, {f.name: scatter(values.get(f.name, np.zeros(0, np.int64)), rows, n, pa.int64())
                                   for f in self.signal_fields})
        return split_by_rules(docs, self.name, self.rules)


def _hosts(urls: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Host part of each URL ('' when there is none)."""
    urls = pc.fill_null(urls, "")
    host = pc.replace_substring_regex(urls, _HOST + r".*$", r"\1")
    is_url = pc.match_substring_regex(urls, _HOST)
    return pc.if_else(is_url, pc.utf8_lower(host), "")
