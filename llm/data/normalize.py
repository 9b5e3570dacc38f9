"""Text normalization as one vectorised Arrow step: Unicode form, control characters, line endings,
whitespace. Indentation is kept (code is a first-class source); only trailing spaces and runs of blank
lines are trimmed.
"""

from __future__ import annotations

import unicodedata

import pyarrow as pa
import pyarrow.compute as pc

from llm.config import NormalizeConfig
from llm.data.steps import StepOutput, empty_quarantine, rejected_rows

# C0 controls except \t and \n (\r is folded into \n first), DEL, C1 controls, and invisible
# characters that only make identical text hash differently (zero-width space, BOM, soft hyphen).
_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x{80}-\x{9f}\x{200b}\x{feff}\x{ad}]"
# Space look-alikes become a plain space so word splitting and dedup see one kind of space.
_SPACES = r"[\x{a0}\x{2000}-\x{200a}\x{202f}\x{205f}]"


def _unicode_normalize(text: pa.ChunkedArray | pa.Array, form: str) -> pa.Array:
    # Arrow's utf8_normalize does not compose (its "NFC" leaves e + U+0301 decomposed), so this one
    # transform goes through CPython's unicodedata, which skips text that is already normalized.
    values = text.to_pylist()
    return pa.array(
        [v if v is None or unicodedata.is_normalized(form, v) else unicodedata.normalize(form, v) for v in values],
        pa.string(),
    )


class NormalizeStep:
    """NFC (configurable), controls removed, `\\r\\n`/`\\r` -> `\\n`, trailing spaces and blank-line runs
    trimmed; documents shorter than `min_chars` afterwards are dropped with the reason."""

    name = "normalize"

    def __init__(self, cfg: NormalizeConfig):
        self.cfg = cfg

    def normalize(self, text: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
        if self.cfg.unicode_form != "none":
            text = _unicode_normalize(text, self.cfg.unicode_form)
        text = pc.replace_substring(text, "\r\n", "\n")
        text = pc.replace_substring(text, "\r", "\n")
        text = pc.replace_substring_regex(text, _CONTROL, "")
        text = pc.replace_substring_regex(text, _SPACES, " ")
        text = pc.replace_substring_regex(text, r"[ \t]+\n", "\n")
        keep = self.cfg.max_blank_lines
        text = pc.replace_substring_regex(text, r"\n{%d,}" % (keep + 2), "\n" * (keep + 1))
        text = pc.replace_substring_regex(text, r"^(?:[ \t]*\n)+", "")  # leading blank lines
        text = pc.utf8_rtrim_whitespace(text)
        return text

    def apply(self, docs: pa.Table) -> StepOutput:
        idx = docs.schema.get_field_index("text")
        text = self.normalize(docs.column("text"))
        docs = docs.set_column(idx, "text", text)
        lengths = pc.utf8_length(text)
        short = pc.less(lengths, self.cfg.min_chars)
        kept = docs.filter(pc.invert(short))
        dropped = docs.filter(short)
        n = dropped.num_rows
        dropped_len = dropped.column("text").to_pylist() if n else []
        rules = ["empty_after_normalize" if not t else "too_short" for t in dropped_len]
        values = [float(len(t)) for t in dropped_len]
        return StepOutput(
            kept=kept,
            dropped=rejected_rows(dropped, self.name, rules, values, [float(self.cfg.min_chars)] * n),
            quarantined=empty_quarantine(),
        )
