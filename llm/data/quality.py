"""Heuristic quality filtering: Gopher quality and repetition, C4 and FineWeb rules as one Arrow step.

Every signal a rule reads is stored as a column (`gopher_*`, `rep_*`, `c4_*`, `fw_*`), so thresholds can
change and `QualityStep.rules` + `filtering.decide` re-filter a stored dataset without recomputing.
Rules run in the order FineWeb's pipeline applies the rule sets (repetition, Gopher, C4, FineWeb); a
dropped document records the first rule it failed, its measured value and the threshold.

C4 removes lines as well as dropping documents: with `c4.remove_lines` (the default, as in C4) a kept
document's text becomes its counted lines, citations removed, and `c4_removed_lines` stores how many
non-blank lines went. The Gopher and C4 signals are measured on the text as it came in and the FineWeb
signals on the text after line removal, the order of FineWeb's own pipeline. As there, C4's
terminal-punctuation line rule is off while the FineWeb rules run (`c4.terminal_punct_lines`): FineWeb's
line-punctuation ratio replaces it, and would find only punctuated lines after it; a dropped document keeps
its original text in `rejected/`, so a person sees what was judged. The line rules depend only on
config, so stored signals stay valid for re-filtering with other document thresholds.

Difference from the published code, on purpose: sentences are counted with a punctuation pattern, not
a sentence splitter.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llm.config import QualityConfig
from llm.data import textsignals as ts
from llm.data.filtering import Rule, applies_to, scatter, split_by_rules, with_columns
from llm.data.repetition import repetition_signals
from llm.data.steps import StepOutput

_BULLET_LINE = r"^\s*[•\-]"
_ELLIPSIS_LINE = r"(\.\.\.|…)\s*$"
_HAS_LETTER = r"\pL"
_NOT_PUNCT = r"[^\p{P}\p{S}\p{Cc}]"  # a token with any such character is a word, not a symbol
# C4: with its terminal-punctuation rule, a counted line ends in . ? ! " ' but not in an ellipsis; wiki
# citations are removed first.
_CITATION = r"\[\d*\]|\[edit\]|\[citation needed\]"
_C4_TERMINAL = r"[.?!\"']$"
_POLICY = r"terms of use|privacy policy|cookie policy|uses cookies|use of cookies|use cookies"
_SENTENCE_END = r"[.?!…]+[\"'”’)\]]*(\s|$)"


def gopher_signals(text: pa.Array, words: ts.Pieces, stop_words: list[str]) -> dict[str, np.ndarray]:
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


def c4_terminal_punct_lines(cfg: QualityConfig) -> bool:
    """Whether C4's terminal-punctuation line rule runs: as configured, else only without the FineWeb
    rules (FineWeb's pipeline turns it off and judges line punctuation by its own ratio instead)."""
    c4 = cfg.c4.terminal_punct_lines
    return not cfg.fineweb.enabled if c4 is None else c4


def c4_signals(text: pa.Array, cfg, terminal_punct: bool = True) -> tuple[dict[str, np.ndarray], pa.Array | None]:
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
        counted &= ~low.matches(_POLICY)
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


def fineweb_signals(text: pa.Array, words: ts.Pieces, cfg) -> dict[str, np.ndarray]:
    lines = ts.split(text, "\n", drop_blank=True)
    n_lines = lines.count()
    no_newlines = ts.lengths(text) - ts.count(text, "\n")
    return {
        "fw_line_punct_ratio": ts.ratio(lines.count(lines.matches(ts.TERMINAL_CLASS + "$")), n_lines),
        "fw_short_line_ratio": ts.ratio(lines.count(lines.lengths() <= cfg.short_line_chars), n_lines),
        "fw_dup_line_char_ratio": ts.ratio(lines.total(lines.lengths() * lines.duplicates()), no_newlines),
        "fw_newline_word_ratio": ts.ratio(ts.count(text, "\n"), words.count(), np.inf),
    }


def quality_rules(cfg: QualityConfig) -> list[Rule]:
    """The enabled rules in the order they are checked."""
    rules: list[Rule] = []

    def add(name: str, signal: str, kind: str, threshold) -> None:
        if threshold is not None:
            rules.append(Rule(name, signal, kind, float(threshold)))

    r = cfg.gopher_repetition
    if r.enabled:
        add("rep_dup_para_frac", "rep_dup_para_frac", "max", r.max_dup_para_frac)
        add("rep_dup_para_char_frac", "rep_dup_para_char_frac", "max", r.max_dup_para_char_frac)
        add("rep_dup_line_frac", "rep_dup_line_frac", "max", r.max_dup_line_frac)
        add("rep_dup_line_char_frac", "rep_dup_line_char_frac", "max", r.max_dup_line_char_frac)
        for n, limit in sorted(r.max_top_ngram_char_frac.items()):
            add(f"rep_top_{n}gram", f"rep_top_{n}gram_char_frac", "max", limit)
        for n, limit in sorted(r.max_dup_ngram_char_frac.items()):
            add(f"rep_dup_{n}gram", f"rep_dup_{n}gram_char_frac", "max", limit)
    g = cfg.gopher
    if g.enabled:
        add("gopher_min_words", "gopher_words", "min", g.min_words)
        add("gopher_max_words", "gopher_words", "max", g.max_words)
        add("gopher_min_mean_word_length", "gopher_mean_word_length", "min", g.min_mean_word_length)
        add("gopher_max_mean_word_length", "gopher_mean_word_length", "max", g.max_mean_word_length)
        add("gopher_hash_ratio", "gopher_hash_ratio", "max", g.max_symbol_word_ratio)
        add("gopher_ellipsis_ratio", "gopher_ellipsis_ratio", "max", g.max_symbol_word_ratio)
        add("gopher_bullet_lines", "gopher_bullet_lines_ratio", "max", g.max_bullet_lines_ratio)
        add("gopher_ellipsis_lines", "gopher_ellipsis_lines_ratio", "max", g.max_ellipsis_lines_ratio)
        add("gopher_alpha_words", "gopher_alpha_words_ratio", "min", g.min_alpha_words_ratio)
        add("gopher_stop_words", "gopher_stop_words", "min", g.min_stop_words)
    c = cfg.c4
    if c.enabled:
        add("c4_lorem_ipsum", "c4_lorem_ipsum", "max", 0 if c.lorem_ipsum else None)
        add("c4_curly_bracket", "c4_curly_bracket", "max", 0 if c.curly_bracket else None)
        add("c4_min_sentences", "c4_sentences", "min", c.min_sentences)
    f = cfg.fineweb
    if f.enabled:
        add("fw_line_punct_ratio", "fw_line_punct_ratio", "min", f.min_line_punct_ratio)
        add("fw_short_line_ratio", "fw_short_line_ratio", "max", f.max_short_line_ratio)
        add("fw_dup_line_char_ratio", "fw_dup_line_char_ratio", "max", f.max_dup_line_char_ratio)
        add("fw_newline_word_ratio", "fw_newline_word_ratio", "max", f.max_newline_word_ratio)
    return rules


def signal_names(cfg: QualityConfig) -> list[str]:
    """Every signal column the step writes, in a fixed order (the schema does not depend on the data)."""
    names: list[str] = []
    r = cfg.gopher_repetition
    if r.enabled:
        names += ["rep_dup_para_frac", "rep_dup_para_char_frac", "rep_dup_line_frac", "rep_dup_line_char_frac"]
        names += [f"rep_top_{n}gram_char_frac" for n in sorted(r.max_top_ngram_char_frac)]
        names += [f"rep_dup_{n}gram_char_frac" for n in sorted(r.max_dup_ngram_char_frac)]
    if cfg.gopher.enabled:
        names += ["gopher_words", "gopher_mean_word_length", "gopher_hash_ratio", "gopher_ellipsis_ratio",
                  "gopher_bullet_lines_ratio", "gopher_ellipsis_lines_ratio", "gopher_alpha_words_ratio",
                  "gopher_stop_words"]
    if cfg.c4.enabled:
        names += ["c4_sentences", "c4_counted_lines", "c4_lorem_ipsum", "c4_curly_bracket"]
        names += ["c4_removed_lines"] if cfg.c4.remove_lines else []
    if cfg.fineweb.enabled:
        names += ["fw_line_punct_ratio", "fw_short_line_ratio", "fw_dup_line_char_ratio", "fw_newline_word_ratio"]
    return names


def compute_signals(text: pa.Array, cfg: QualityConfig) -> dict[str, np.ndarray]:
    """Every enabled signal for a batch of texts (one value per text)."""
    return signals_and_text(text, cfg)[0]


def signals_and_text(text: pa.Array, cfg: QualityConfig) -> tuple[dict[str, np.ndarray], pa.Array | None]:
    """Every enabled signal, and the texts after C4's line removal (None when it is off)."""
    text = ts.as_array(text)
    out: dict[str, np.ndarray] = {}
    words = ts.words(text) if (cfg.gopher.enabled or cfg.gopher_repetition.enabled or cfg.fineweb.enabled) else None
    if cfg.gopher_repetition.enabled:
        out.update(repetition_signals(text, cfg.gopher_repetition, words))
    if cfg.gopher.enabled:
        out.update(gopher_signals(text, words, cfg.gopher.stop_words))
    rewritten = None
    if cfg.c4.enabled:
        c4, rewritten = c4_signals(text, cfg.c4, c4_terminal_punct_lines(cfg))
        out.update(c4)
    if cfg.fineweb.enabled:
        # FineWeb measures the text C4 left, as in its own pipeline (one more tokenization, only then).
        fw_text = text if rewritten is None else rewritten
        out.update(fineweb_signals(fw_text, words if rewritten is None else ts.words(fw_text), cfg.fineweb))
    return out, rewritten


class QualityStep:
    """Computes the quality signals of the documents of the configured sources, stores them as
    `float64` columns and drops each document at the first rule it fails."""

    name = "quality"

    def __init__(self, cfg: QualityConfig):
        self.cfg = cfg
        self.rules = quality_rules(cfg)
        self.signals = signal_names(cfg)

    @property
    def signal_fields(self) -> list[pa.Field]:
        return [pa.field(n, pa.float64()) for n in self.signals]

    def apply(self, docs: pa.Table) -> StepOutput:
        rows = applies_to(docs, self.cfg.sources)
        values, rewritten = ({}, None)
        if len(rows):
            values, rewritten = signals_and_text(docs.column("text").take(pa.array(rows, pa.int64())), self.cfg)
        n = docs.num_rows
        docs = with_columns(docs, {
            name: scatter(values.get(name, np.zeros(0)), rows, n, pa.float64()) for name in self.signals
        })
        if rewritten is None:
            return split_by_rules(docs, self.name, self.rules)
        # The rewritten text rides along as a column through the split: kept rows take it, dropped rows
        # keep the text they were judged on.
        original = docs.column("text").combine_chunks()
        new_text = rewritten if len(rows) == n else _put(original, rows, rewritten)
        out = split_by_rules(docs.append_column(_REWRITTEN, new_text), self.name, self.rules)
        kept = out.kept.set_column(out.kept.schema.get_field_index("text"), docs.schema.field("text"),
                                   out.kept.column(_REWRITTEN)).drop_columns([_REWRITTEN])
        return StepOutput(kept=kept, dropped=out.dropped.drop_columns([_REWRITTEN]), quarantined=out.quarantined)


_REWRITTEN = "__c4_text"


def _put(values: pa.Array, rows: np.ndarray, new: pa.Array) -> pa.Array:
    """`values` with the entries at `rows` (ascending) replaced by `new`, in order."""
    mask = np.zeros(len(values), dtype=bool)
    mask[rows] = True
    return pc.replace_with_mask(values, pa.array(mask), new)
