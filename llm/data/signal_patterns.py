"""The quality signals by their definitions: Arrow splits and RE2 patterns over the whole batch.

`textsignals.words`, `line_kernels.text_counts` and `c4_kernels` compute the same values in compiled
single passes; these are the readable definitions they are tested against (and a reference for anyone
porting a rule), not used by the pipeline.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llm.data import textsignals as ts
from llm.data.c4_kernels import POLICY_PHRASES
from llm.data.textsignals import Pieces

_BULLET_LINE = r"^\s*[•\-]"
_ELLIPSIS_LINE = r"(\.\.\.|…)\s*$"
_HAS_LETTER = r"\pL"
_NOT_PUNCT = r"[^\p{P}\p{S}\p{Cc}]"  # a token with any such character is a word, not a symbol
# C4: with its terminal-punctuation rule, a counted line ends in . ? ! " ' but not in an ellipsis; wiki
# citations are removed first.
_CITATION = r"\[\d*\]|\[edit\]|\[citation needed\]"
_C4_TERMINAL = r"[.?!\"']$"
_POLICY_PATTERN = "|".join(POLICY_PHRASES)
_SENTENCE_END = r"[.?!…]+[\"'”’)\]]*(\s|$)"


def words_by_patterns(text: pa.Array) -> ts.Pieces:
    """`words` by its definition: two RE2 rewrites over the batch and Arrow's whitespace split (slower;
    the reference the compiled tokenizer is tested against)."""
    spaced = pc.replace_substring_regex(text, ts._LEADING, r"\1\2 \3")
    spaced = pc.replace_substring_regex(spaced, ts._TRAILING, r"\1 \2\3")
    lists = pc.utf8_split_whitespace(spaced)
    parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(lists)
    nonempty = pc.greater(pc.binary_length(values), 0)  # Arrow yields one "" for an empty text
    return ts.Pieces(values.filter(nonempty), parent[ts._bool(nonempty)], len(text))


def gopher_by_patterns(text: pa.Array, words: Pieces, stop_words: list[str]) -> dict[str, np.ndarray]:
    n_tokens = words.count()
    is_word = words.matches(_NOT_PUNCT)
    n_words = words.count(is_word)
    lines = ts.split(text, "\n")
    stop = pc.index_in(words.values, value_set=pa.array(stop_words, pa.string()))
    stop_idx = pc.fill_null(stop, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    hit = stop_idx >= 0
    distinct_stop = ts.first_seen_mask(words.parent[hit], stop_idx[hit])
    return {
        "gopher_words": n_words.astype(np.float64),
        "gopher_mean_word_length": ts.ratio(words.total(words.lengths() * is_word), n_words, np.nan),
        "gopher_hash_ratio": ts.ratio(ts.count(text, "#"), n_tokens),
        "gopher_ellipsis_ratio": ts.ratio(ts.count(text, "...") + ts.count(text, "…"), n_tokens),
        "gopher_bullet_lines_ratio": ts.ratio(lines.count(lines.matches(_BULLET_LINE)), lines.count()),
        "gopher_ellipsis_lines_ratio": ts.ratio(lines.count(lines.matches(_ELLIPSIS_LINE)), lines.count()),
        "gopher_alpha_words_ratio": ts.ratio(words.count(words.matches(_HAS_LETTER)), n_tokens),
        "gopher_stop_words": np.bincount(words.parent[hit][distinct_stop], minlength=words.n_docs).astype(np.float64),
    }


def fineweb_by_patterns(text: pa.Array, words: Pieces, cfg) -> dict[str, np.ndarray]:
    lines = ts.split(text, "\n", drop_blank=True)
    n_lines = lines.count()
    no_newlines = ts.lengths(text) - ts.count(text, "\n")
    return {
        "fw_line_punct_ratio": ts.ratio(lines.count(lines.matches(ts.TERMINAL_CLASS + "$")), n_lines),
        "fw_short_line_ratio": ts.ratio(lines.count(lines.lengths() <= cfg.short_line_chars), n_lines),
        "fw_dup_line_char_ratio": ts.ratio(lines.total(lines.lengths() * lines.duplicates()), no_newlines),
        "fw_newline_word_ratio": ts.ratio(ts.count(text, "\n"), words.count(), np.inf),
    }


def repetition_lines_by_patterns(text) -> dict[str, np.ndarray]:
    """The line and paragraph signals of the Gopher repetition rules."""
    n_chars = ts.lengths(text)
    out: dict[str, np.ndarray] = {}
    stripped = pc.utf8_trim_whitespace(text)
    paras = ts.split(stripped, r"\n{2,}", regex=True)
    lines = ts.split(text, r"\n+", regex=True)
    for name, pieces in (("para", paras), ("line", lines)):
        dup = pieces.duplicates()
        out[f"rep_dup_{name}_frac"] = ts.ratio(pieces.count(dup), pieces.count())
        out[f"rep_dup_{name}_char_frac"] = ts.ratio(pieces.total(pieces.lengths() * dup), n_chars)
    return out


def c4_by_patterns(text: pa.Array, cfg, terminal_punct: bool = True) -> tuple[dict[str, np.ndarray], pa.Array | None]:
    """C4's line rules: the signals, and with `cfg.remove_lines` each text rewritten to its counted lines
    (None otherwise). `terminal_punct`: only lines ending in terminal punctuation count."""
    lines = ts.split(text, "\n")
    stripped = pc.utf8_trim_whitespace(lines.values)
    word_lists = pc.utf8_split_whitespace(stripped)
    words_per_line = pc.list_value_length(word_lists).to_numpy(zero_copy_only=False).astype(np.int64)
    word_parent = pc.list_parent_indices(word_lists).to_numpy(zero_copy_only=False).astype(np.int64)
    longest = np.zeros(len(stripped), np.int64)  # longest word per line
    if len(word_parent):
        np.maximum.at(longest, word_parent, ts.lengths(pc.list_flatten(word_lists)))
    cleaned = pc.replace_substring_regex(stripped, _CITATION, "")
    lower = pc.utf8_lower(cleaned)
    line = ts.Pieces(cleaned, lines.parent, lines.n_docs)
    low = ts.Pieces(lower, lines.parent, lines.n_docs)
    counted = (longest <= cfg.max_word_length) & (words_per_line >= cfg.min_words_per_line)
    if terminal_punct:
        counted &= line.matches(_C4_TERMINAL) & ~line.matches(r"\.\.\.$")
    lorem = counted & low.matches("lorem ipsum")
    if cfg.javascript_lines:
        counted &= ~low.matches("javascript")
    curly = counted & line.matches(r"\{")
    if cfg.policy_lines:
        counted &= ~low.matches(_POLICY_PATTERN)
    sentences = np.maximum(ts.count(cleaned, _SENTENCE_END, regex=True), 1)
    signals = {
        "c4_sentences": line.total(sentences * counted),
        "c4_counted_lines": line.count(counted).astype(np.float64),
        "c4_lorem_ipsum": line.count(lorem).astype(np.float64),
        "c4_curly_bracket": line.count(curly).astype(np.float64),
    }
    if not cfg.remove_lines:
        return signals, None
    nonblank = ts.lengths(stripped) > 0
    signals["c4_removed_lines"] = line.count(nonblank & ~counted).astype(np.float64)
    return signals, _join_lines(cleaned, lines.parent, counted, lines.n_docs)


def _join_lines(lines: pa.Array, parent: np.ndarray, keep: np.ndarray, n_docs: int) -> pa.Array:
    """Per document, its kept lines joined by newlines (one Arrow list join, no loop over documents);
    "" for a document with none."""
    per_doc = np.bincount(parent[keep], minlength=n_docs)
    offsets = pa.array(np.concatenate([[0], np.cumsum(per_doc)]).astype(np.int32))
    kept = lines.filter(pa.array(keep)) if len(lines) else lines
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, kept), "\n")
    return pc.utf8_trim_whitespace(joined)  # as C4, which strips the joined text


def repetition_by_patterns(text, cfg, words: Pieces) -> dict[str, np.ndarray]:
    """Every Gopher repetition signal: the line and paragraph ones by patterns, the n-gram ones over
    Arrow's dictionary codes of the words (the compiled tokenizer's hashes are the pipeline's codes)."""
    from llm.data.repetition import ngram_signals

    out = repetition_lines_by_patterns(text)
    out.update(ngram_signals(ts.Pieces(words.values, words.parent, words.n_docs), cfg, ts.lengths(text)))
    return out


def signals_by_patterns(text: pa.Array, cfg) -> tuple[dict[str, np.ndarray], pa.Array | None]:
    """`quality.signals_and_text` by the definitions: the same signals and rewritten texts."""
    from llm.data.quality import c4_terminal_punct_lines

    text = ts.as_array(text)
    out: dict[str, np.ndarray] = {}
    words = words_by_patterns(text)
    if cfg.gopher_repetition.enabled:
        out.update(repetition_by_patterns(text, cfg.gopher_repetition, words))
    if cfg.gopher.enabled:
        out.update(gopher_by_patterns(text, words, cfg.gopher.stop_words))
    rewritten = None
    if cfg.c4.enabled:
        c4, rewritten = c4_by_patterns(text, cfg.c4, c4_terminal_punct_lines(cfg))
        out.update(c4)
    if cfg.fineweb.enabled:
        fw_text = text if rewritten is None else rewritten
        out.update(fineweb_by_patterns(fw_text, words if rewritten is None else words_by_patterns(fw_text), cfg.fineweb))
    return out, rewritten
