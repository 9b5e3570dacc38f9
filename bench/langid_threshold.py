"""The English threshold of language ID, calibrated for py3langid against FineWeb's fastText setting.

    PYTHONPATH=. .venv/bin/python bench/langid_threshold.py                        # py3langid only
    PYTHONPATH=.:FT_SITE .venv/bin/python bench/langid_threshold.py --fasttext lid.176.ftz

FineWeb keeps a document when fastText's lid.176 gives English a score above 0.65. py3langid's
probabilities are on another scale (naive Bayes, normalized: most texts score near 1), so the same number
does not make the same cut. On the development set (`langid_dev.jsonl`: 13 languages, 50 short texts
each, normalized as the pipeline does) this measures, for English at each threshold, the documents kept
(top language English, score above the threshold), their precision against the labels and the keep rate
(share of the English texts kept), for py3langid and, given `--fasttext MODEL` (a lid.176 model file and
an importable `fasttext` module, e.g. the `fasttext-predict` package), for fastText as datatrove calls it
(newlines as spaces, all labels).

Method: the reference is fastText's precision and keep rate at 0.65 (measured, or `--reference-keep` /
`--reference-precision`). Among py3langid thresholds with at least that precision and keep rate, those
keeping the fewest documents make the same cut; the calibrated threshold is the middle of that range,
rounded to 0.05 (one of the 50 English texts moves the keep rate by 0.02, so the dev set cannot place
the threshold more finely). The labels are the packages' own: a few "pl" fortunes are English, which
caps precision below 1 for both models.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm.config import NormalizeConfig  # noqa: E402
from llm.data.langid import identify  # noqa: E402
from llm.data.normalize import NormalizeStep  # noqa: E402

FINEWEB_THRESHOLD = 0.65
# fastText lid.176 (the compressed .ftz) on this dev set at 0.65, measured with --fasttext: 50 kept, 48 English.
REFERENCE_KEEP = 0.96
REFERENCE_PRECISION = 0.96
SHOWN = (0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.8, 0.9)


def english_scores_py3langid(texts: list[str]) -> np.ndarray:
    """Per text: py3langid's probability when its top language is English, else 0 (the step keeps
    only documents whose top language is kept)."""
    langs, scores = identify(texts)
    return np.where(np.array(langs) == "en", scores, 0.0)


def english_scores_fasttext(texts: list[str], model_path: str) -> np.ndarray:
    """Per text: fastText's English score over all labels, as datatrove's LanguageFilter reads it."""
    import fasttext

    model = fasttext.load_model(model_path)
    out = np.zeros(len(texts))
    for i, text in enumerate(texts):
        labels, scores = model.predict(text.replace("\n", " "), k=-1)
        out[i] = dict(zip(labels, np.asarray(scores, float))).get("__label__en", 0.0)
    return out


def cut(scores: np.ndarray, is_en: np.ndarray, threshold: float) -> tuple[int, float, float]:
    """(documents kept, precision, keep rate) of keeping scores above `threshold`."""
    kept = scores > threshold
    hits = int((kept & is_en).sum())
    return int(kept.sum()), hits / max(int(kept.sum()), 1), hits / int(is_en.sum())


def calibrate(scores: np.ndarray, is_en: np.ndarray, keep: float, precision: float) -> tuple[float, float, float]:
    """(low, high, calibrated): the range of thresholds with at least `precision` and `keep` that keep
    the fewest documents, and its middle rounded to 0.05."""
    edges = np.unique(np.concatenate([[0.0, 1.0], scores[(scores > 0) & (scores < 1)]]))
    # Every threshold in [edges[i], edges[i+1]) keeps the same documents.
    ok = [(lo, hi, cut(scores, is_en, lo)) for lo, hi in zip(edges[:-1], edges[1:])]
    ok = [(lo, hi, c) for lo, hi, c in ok if c[1] >= precision - 1e-9 and c[2] >= keep - 1e-9]
    if not ok:
        raise SystemExit(f"no threshold reaches precision {precision} and keep rate {keep}")
    fewest = min(c[0] for _, _, c in ok)
    lows, highs = zip(*[(lo, hi) for lo, hi, c in ok if c[0] == fewest])
    low, high = min(lows), max(highs)
    return low, high, round((low + high) / 2 / 0.05) * 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/langid_dev.jsonl"))
    parser.add_argument("--fasttext", help="lid.176 model file (.bin or .ftz): measure the reference")
    parser.add_argument("--reference-keep", type=float, default=REFERENCE_KEEP)
    parser.add_argument("--reference-precision", type=float, default=REFERENCE_PRECISION)
    args = parser.parse_args()

    rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines()]
    texts = NormalizeStep(NormalizeConfig()).normalize(pa.array([r["text"] for r in rows])).to_pylist()
    is_en = np.array([r["label"] == "en" for r in rows])
    print(f"{len(rows)} texts, {int(is_en.sum())} labelled English")
    sides = {"py3langid": english_scores_py3langid(texts)}
    if args.fasttext:
        sides["fasttext"] = english_scores_fasttext(texts, args.fasttext)
    print(f"{'threshold':>9} " + " ".join(f"{name + ' kept/precision/keep':>34}" for name in sides))
    for t in SHOWN:
        cells = [cut(s, is_en, t) for s in sides.values()]
        print(f"{t:>9.2f} " + " ".join(f"{k:>16d} / {p:.3f} / {r:.3f}" for k, p, r in cells))
    keep, precision = args.reference_keep, args.reference_precision
    if args.fasttext:
        _, precision, keep = cut(sides["fasttext"], is_en, FINEWEB_THRESHOLD)
        print(f"fastText at {FINEWEB_THRESHOLD}: precision {precision:.3f}, keep rate {keep:.3f}")
    low, high, calibrated = calibrate(sides["py3langid"], is_en, keep, precision)
    kept, p, r = cut(sides["py3langid"], is_en, calibrated)
    print(f"py3langid thresholds in [{low:.4f}, {high:.4f}) give precision >= {precision:.3f} and keep rate "
          f">= {keep:.3f} with the fewest documents kept")
    print(f"calibrated English threshold {calibrated:.2f}: {kept} kept, precision {p:.3f}, keep rate {r:.3f}")


if __name__ == "__main__":
    main()
