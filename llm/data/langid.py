"""Language identification with the naive-Bayes model that ships inside `py3langid` (no download,
~0.5 s to load once per process).

Chosen by measurement on the 13-language development set (650 short texts, see README): py3langid
0.977 accuracy, lingua 0.975 at ~360 texts/s after an 18 s model load, CLD2 0.940 at ~27,000 texts/s
but wrong on short Bulgarian/Spanish/Russian and unable to take some valid input.

The model is py3langid's, run by `langid_kernels.classify_batch`: py3langid's `classify`
(`norm_probs=True`) as one compiled pass over a batch (the automaton walk over each text's UTF-8
bytes, the feature counts, the class scores, the softmax), in float64 where py3langid computes in
float32. It gives py3langid's language on every development text and on random and edge input, and
its probability to py3langid's float32 rounding (at most 1.4e-5 apart on the development set; 1e-13
from the same arithmetic in float64): the accuracy is py3langid's, 0.977. Measured by
`bench/langid_speed.py` (CPU time, one core, best of several passes, on a shared 2-core machine whose
load moves both figures): 45,000-71,000 texts/s per core against 5,300-11,000 for py3langid's own
`classify` on the same texts and core, 6.4-9.8 times as fast. Numba's compile costs ~1.6 s CPU once
per installation (its code is cached beside `langid_kernels.py`); a later process's first call costs
~0.4-0.8 s (numba's import and the cached code's load). The model takes ~125 MB in memory (the
automaton, py3langid's float16 table and its float32 copy that the loop reads).

A document gets `lang` (ISO 639-1 where one exists) and `lang_score` (the model's probability,
calibrated across lengths). Long documents are judged on a bounded sample (start, middle and end),
so the dominant language of a mixed document wins and the cost per document is bounded.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import numpy as np
import pyarrow as pa

from llm.config import LangIdConfig
from llm.data.filtering import applies_to, scatter, with_columns
from llm.data.steps import StepOutput, empty_quarantine, rejected_rows

UNDETERMINED = "und"
# Below this probability the model is no better than guessing among its classes: no language at all
# (empty text, digits, binary garbage).
_NO_LANGUAGE = 0.05
# Texts per compiled call: bounds its buffers (a sampled text is at most ~16 KB of UTF-8, and the walk
# keeps 4 bytes per byte) at ~80 MB however many texts a shard holds.
_BATCH = 1024


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@lru_cache(maxsize=1)
def _tables():
    """py3langid's model as the arrays the compiled classifier reads (the naive-Bayes table as float32:
    its float16 values exactly)."""
    ident = _identifier()
    classes = list(ident.nb_classes)
    first = {c: classes.index(c) for c in classes}
    dupes = [i for i, c in enumerate(classes) if first[c] != i]
    return (np.frombuffer(ident.tk_nextmove, np.uint32 if ident.tk_nextmove.itemsize == 4 else np.uint64),
            np.frombuffer(ident.tk_row, np.uint16 if ident.tk_row.itemsize == 2 else np.uint32).astype(np.int64) << 8,
            np.asarray(ident.tk_output, np.int32),
            np.ascontiguousarray(ident.nb_ptc, np.float32),
            np.asarray(ident.nb_pc, np.float32),
            np.array([first[classes[i]] for i in dupes], np.int64),
            np.array(dupes, np.int64),
            classes)


def encode(text: str) -> bytes:
    """The bytes py3langid classifies for `text`: lower case when all upper case, NFC, UTF-8 (lone
    surrogates as their three-byte form)."""
    if text.isupper():
        text = text.lower()
    return unicodedata.normalize("NFC", text).encode("utf8", errors="surrogatepass")


def supported_languages() -> list[str]:
    """Language codes the model can answer."""
    return list(_identifier().labels)


def sample(text: str, max_chars: int) -> str:
    """The text itself when short; else its start, middle and end, a third of `max_chars` each."""
    if len(text) <= max_chars:
        return text
    third = max_chars // 3
    mid = len(text) // 2 - third // 2
    return "\n".join((text[:third], text[mid:mid + third], text[-third:]))


def identify(texts: list[str], max_chars: int = 4000) -> tuple[list[str], np.ndarray]:
    """(language code, probability) per text; `und` where no language can be told."""
    from llm.data.langid_kernels import classify_batch

    *model, classes = _tables()
    langs: list[str] = []
    scores = np.zeros(len(texts), np.float64)
    for lo in range(0, len(texts), _BATCH):
        encoded = [encode(sample(text or "", max_chars)) for text in texts[lo:lo + _BATCH]]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        best, probs = classify_batch(np.frombuffer(b"".join(encoded), np.uint8), offsets, *model)
        scores[lo:lo + len(encoded)] = probs
        langs += [UNDETERMINED if p < _NO_LANGUAGE or classes[i] == "zxx" else classes[i]
                  for i, p in zip(best.tolist(), probs.tolist())]
    return langs, scores


class LangIdStep:
    """Adds `lang` and `lang_score`; drops documents outside the keep-list or not above their threshold."""

    name = "langid"
    signal_fields = [pa.field("lang", pa.string()), pa.field("lang_score", pa.float64())]

    def __init__(self, cfg: LangIdConfig):
        self.cfg = cfg

    def threshold(self, lang: str) -> float:
        return self.cfg.min_confidence_per_language.get(lang, self.cfg.min_confidence)

    def apply(self, docs: pa.Table) -> StepOutput:
        rows = applies_to(docs, self.cfg.sources)
        n = docs.num_rows
        texts = docs.column("text").take(pa.array(rows, pa.int64())).to_pylist() if len(rows) else []
        langs, scores = identify(texts, self.cfg.max_chars)
        docs = with_columns(docs, {"lang": scatter(langs, rows, n, pa.string()),
                                   "lang_score": scatter(scores, rows, n, pa.float64())})
        keep = set(self.cfg.keep)
        rule: list[str | None] = [None] * n
        threshold: list[float | None] = [None] * n
        for r, lang, score in zip(rows.tolist(), langs, scores.tolist()):
            if keep and lang not in keep:
                rule[r] = "lang_not_kept"
            elif score <= self.threshold(lang):  # a score must exceed it, as in datatrove's LanguageFilter
                rule[r], threshold[r] = "lang_low_confidence", self.threshold(lang)
        dropped_mask = np.array([r is not None for r in rule], dtype=bool)
        idx = np.flatnonzero(dropped_mask).tolist()
        dropped = docs.filter(pa.array(dropped_mask))
        score_col = docs.column("lang_score").to_pylist()
        lang_col = docs.column("lang").to_pylist()
        return StepOutput(
            kept=docs.filter(pa.array(~dropped_mask)),
            dropped=rejected_rows(dropped, self.name, [rule[i] for i in idx], [score_col[i] for i in idx],
                                  [threshold[i] for i in idx], [f"lang={lang_col[i]}" for i in idx]),
            quarantined=empty_quarantine(),
        )
