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
from llm.data.c4_kernels import COUNTED, CURLY, LOREM, REMOVED, SENTENCES, c4_lines, needle_table
from llm.data.filtering import Rule, applies_to, scatter, split_by_rules, with_columns
from llm.data.repetition import ngram_signals, piece_signals
from llm.data.steps import StepOutput
from llm.data.text_classes import classes
from llm.data.textsignals import utf8_buffers
from llm.data.word_kernels import token_totals

def gopher_signals(words: ts.Words, counts: dict[str, np.ndarray], stop_words: list[str]) -> dict[str, np.ndarray]:
    """Gopher's quality signals from the batch's word tokens and `textsignals.text_counts`."""
    totals = token_totals(words.parent, words.lengths(), words.flags, words.index_in(stop_words), words.n_docs,
                          len(stop_words))
    n_tokens, n_words, word_chars, letter_tokens, stop = (totals[:, k] for k in range(5))
    return {
        "gopher_words": n_words.astype(np.float64),
        "gopher_mean_word_length": ts.ratio(word_chars, n_words, np.nan),
        "gopher_hash_ratio": ts.ratio(counts["hashes"], n_tokens),
        "gopher_ellipsis_ratio": ts.ratio(counts["ellipses"], n_tokens),
        "gopher_bullet_lines_ratio": ts.ratio(counts["bullet_lines"], counts["lines"]),
        "gopher_ellipsis_lines_ratio": ts.ratio(counts["ellipsis_lines"], counts["lines"]),
        "gopher_alpha_words_ratio": ts.ratio(letter_tokens, n_tokens),
        "gopher_stop_words": stop.astype(np.float64),
    }


def c4_terminal_punct_lines(cfg: QualityConfig) -> bool:
    """Whether C4's terminal-punctuation line rule runs: as configured, else only without the FineWeb
    rules (FineWeb's pipeline turns it off and judges line punctuation by its own ratio instead)."""
    c4 = cfg.c4.terminal_punct_lines
    return not cfg.fineweb.enabled if c4 is None else c4


def c4_signals(text: pa.Array, cfg, terminal_punct: bool = True) -> tuple[dict[str, np.ndarray], pa.Array | None]:
    """C4's line rules: the signals, and with `cfg.remove_lines` each text rewritten to its counted lines
    (None otherwise). `terminal_punct`: only lines ending in terminal punctuation count. Compiled
    (`c4_kernels`); the definition is `signal_patterns.c4_by_patterns`."""
    data, offsets = utf8_buffers(text)
    needles, needle_offsets = needle_table()
    rows, out, out_offsets = c4_lines(data, offsets.astype(np.int64), classes(), cfg.max_word_length,
                                      cfg.min_words_per_line, terminal_punct, cfg.javascript_lines,
                                      cfg.policy_lines, needles, needle_offsets)
    rows = rows.astype(np.float64)
    signals = {"c4_sentences": rows[:, SENTENCES], "c4_counted_lines": rows[:, COUNTED],
               "c4_lorem_ipsum": rows[:, LOREM], "c4_curly_bracket": rows[:, CURLY]}
    if not cfg.remove_lines:
        return signals, None
    signals["c4_removed_lines"] = rows[:, REMOVED]
    return signals, ts.string_array(out, out_offsets)


def fineweb_signals(n_words: np.ndarray, counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """FineWeb's signals from the word count and `textsignals.text_counts` of the text it judges."""
    lines = counts["nonblank_lines"]
    return {
        "fw_line_punct_ratio": ts.ratio(counts["terminal_lines"], lines),
        "fw_short_line_ratio": ts.ratio(counts["short_lines"], lines),
        "fw_dup_line_char_ratio": ts.ratio(counts["dup_nonblank_chars"], counts["chars"] - counts["newlines"]),
        "fw_newline_word_ratio": ts.ratio(counts["newlines"], n_words, np.inf),
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


# Texts are measured in runs of about this many bytes: each compiled pass then finds the run's text
# still in the CPU's cache from the pass before (a 256-document batch of web pages is megabytes).
_RUN_BYTES = 512 << 10


def signals_and_text(text: pa.Array, cfg: QualityConfig) -> tuple[dict[str, np.ndarray], pa.Array | None]:
    """Every enabled signal, and the texts after C4's line removal (None when it is off)."""
    values, rewritten, _ = measure(text, cfg)
    return values, rewritten


def measure(text: pa.Array, cfg: QualityConfig) -> tuple[dict[str, np.ndarray], pa.Array | None, dict[str, np.ndarray]]:
    """`signals_and_text`, plus the rows left unmeasured: signal name -> mask, only under
    `measure: until_dropped` (the values there are NaN)."""
    text = ts.as_array(text)
    ends = np.cumsum(pc.binary_length(text).to_numpy(zero_copy_only=False).astype(np.int64)) if len(text) else []
    cuts = [0]
    while cuts[-1] < len(text):  # runs of whole texts, each at least one text
        done = int(ends[cuts[-1] - 1]) if cuts[-1] else 0
        cuts.append(max(cuts[-1] + 1, int(np.searchsorted(ends, done + _RUN_BYTES, side="right"))))
    if len(cuts) <= 2:
        return _signals_of_run(text, cfg)
    runs = [_signals_of_run(text.slice(a, b - a), cfg) for a, b in zip(cuts, cuts[1:])]
    values = {name: np.concatenate([r[0][name] for r in runs]) for name in runs[0][0]}
    skipped = {k: np.concatenate([r[2][k] for r in runs]) for k in runs[0][2]}
    rewritten = None
    if runs[0][1] is not None:
        parts = [r[1] for r in runs]
        if len({p.type for p in parts}) > 1:  # a run past 2 GiB came back as large_string
            parts = [p.cast(pa.large_string()) for p in parts]
        rewritten = pa.concat_arrays(parts)
    return values, rewritten, skipped


def _signals_of_run(text: pa.Array, cfg: QualityConfig) -> tuple[dict[str, np.ndarray], pa.Array | None,
                                                                 dict[str, np.ndarray]]:
    out: dict[str, np.ndarray] = {}
    skipped: dict[str, np.ndarray] = {}
    short = cfg.fineweb.short_line_chars
    counts = ts.text_counts(text, short)
    words = ts.words(text) if (cfg.gopher.enabled or cfg.gopher_repetition.enabled or cfg.fineweb.enabled) else None
    # Under `until_dropped` each rule set measures only the rows the sets before it keep: the n-gram
    # signals after the line and paragraph ones, C4 after Gopher, FineWeb after C4. (Gopher shares the
    # tokens and counts already made, so it measures every row.)
    lazy = cfg.measure == "until_dropped"
    rules = quality_rules(cfg) if lazy else []
    live = np.arange(len(text))
    if cfg.gopher_repetition.enabled:
        pieces = piece_signals(counts)
        ngram_rows = _passing(pieces, rules, live) if lazy else live
        ngrams = ngram_signals(words, cfg.gopher_repetition, counts["chars"], ngram_rows)
        out.update({**pieces, **_spread(ngrams, ngram_rows, len(text))})
        if lazy:
            skipped.update(dict.fromkeys(ngrams, _unmeasured(ngram_rows, len(text))))
    if cfg.gopher.enabled:
        out.update(gopher_signals(words, counts, cfg.gopher.stop_words))
    rewritten = None
    if cfg.c4.enabled:
        if lazy:
            live = _passing(out, rules, live)
        part = text if len(live) == len(text) else text.take(pa.array(live, pa.int64()))
        c4, part_text = c4_signals(part, cfg.c4, c4_terminal_punct_lines(cfg))
        out.update(_spread(c4, live, len(text)))
        if part_text is not None:  # unmeasured rows are dropped and keep their text
            rewritten = part_text if len(live) == len(text) else _put(text, live, part_text)
        if lazy:
            skipped.update(dict.fromkeys(c4, _unmeasured(live, len(text))))
    if cfg.fineweb.enabled:
        # FineWeb measures the text C4 left, as in its own pipeline (one more tokenization, only then).
        if lazy:
            live = _passing(out, rules, live)
        if rewritten is None and len(live) == len(text):
            n_words = words.count()
        else:
            judged = text if rewritten is None else rewritten
            judged = judged if len(live) == len(text) else judged.take(pa.array(live, pa.int64()))
            n_words = ts.word_counts(judged)
            counts = ts.text_counts(judged, short, repetition=False)
        fw = fineweb_signals(n_words, counts)
        out.update(_spread(fw, live, len(text)))
        if lazy:
            skipped.update(dict.fromkeys(fw, _unmeasured(live, len(text))))
    return out, rewritten, skipped


def _passing(values: dict[str, np.ndarray], rules: list[Rule], rows: np.ndarray) -> np.ndarray:
    """The `rows` (ascending) that fail none of the rules whose signals `values` holds."""
    ok = np.ones(len(rows), dtype=bool)
    for rule in rules:
        if rule.signal in values:
            ok &= ~rule.fails(values[rule.signal][rows])
    return rows[ok]


def _spread(values: dict[str, np.ndarray], rows: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Values measured on `rows` as arrays of all `n` rows, NaN where not measured."""
    if len(rows) == n:
        return values
    out = {}
    for name, v in values.items():
        full = np.full(n, np.nan)
        full[rows] = v
        out[name] = full
    return out


def _unmeasured(rows: np.ndarray, n: int) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[rows] = False
    return mask


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
        values, rewritten, skipped = ({}, None, {})
        if len(rows):
            values, rewritten, skipped = measure(docs.column("text").take(pa.array(rows, pa.int64())), self.cfg)
        n = docs.num_rows
        docs = with_columns(docs, {
            name: _null_where(scatter(values.get(name, np.zeros(0)), rows, n, pa.float64()), rows,
                              skipped.get(name))
            for name in self.signals
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


def _null_where(column: pa.Array, rows: np.ndarray, unmeasured: np.ndarray | None) -> pa.Array:
    """`column` with null at the `rows` entries a rule set did not measure (`measure: until_dropped`)."""
    if unmeasured is None or not unmeasured.any():
        return column
    mask = np.zeros(len(column), dtype=bool)
    mask[rows[unmeasured]] = True
    return pc.if_else(pa.array(mask), pa.scalar(None, pa.float64()), column)


def _put(values: pa.Array, rows: np.ndarray, new: pa.Array) -> pa.Array:
    """`values` with the entries at `rows` (ascending) replaced by `new`, in order."""
    mask = np.zeros(len(values), dtype=bool)
    mask[rows] = True
    return pc.replace_with_mask(values, pa.array(mask), new)
