"""Language ID speed and accuracy: py3langid's own `classify` against llmpipe's `identify`.

    PYTHONPATH=. .venv/bin/python bench/langid_speed.py [--repeat 7] [--cpu 0]

Both run on the same development texts (`langid_dev.jsonl`: 13 languages, 50 short texts each,
normalized as the pipeline does and cut by `sample` to 4,000 characters as `identify` cuts them), in
this one process pinned to one core, with one thread for numba and BLAS. Speed is CPU time
(`time.process_time`), best of `--repeat` passes over all texts, so load from other processes on the
machine distorts it less than wall time would; both models are loaded and `identify` is compiled (or
its compiled code loaded from numba's cache) before the passes, and those one-time costs are printed
separately. Accuracy counts the top language against the labels. The ratio of the two speeds is last.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow as pa  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm.config import NormalizeConfig  # noqa: E402
from llm.data.langid import _tables, identify, sample  # noqa: E402
from llm.data.normalize import NormalizeStep  # noqa: E402

MAX_CHARS = 4000


def best_cpu_seconds(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/langid_dev.jsonl"))
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--cpu", type=int, help="core to run on (default: the first this process may use)")
    args = parser.parse_args()
    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})

    rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines()]
    texts = NormalizeStep(NormalizeConfig()).normalize(pa.array([r["text"] for r in rows])).to_pylist()
    labels = [r["label"] for r in rows]
    print(f"{len(texts)} texts, {len(set(labels))} languages, core {cpu}, CPU time best of {args.repeat}")

    start = time.process_time()
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    py_load = time.process_time() - start
    start = time.process_time()
    _tables()
    ours_load = time.process_time() - start
    start = time.process_time()
    identify(["warm up"])
    ours_first = time.process_time() - start

    sampled = [sample(t, MAX_CHARS) for t in texts]
    py_out: list = []
    ours_out: list = []

    def run_py3langid():
        py_out[:] = [ident.classify(sample(t, MAX_CHARS)) for t in texts]

    def run_identify():
        ours_out[:] = [identify(texts, MAX_CHARS)]

    py_s = best_cpu_seconds(run_py3langid, args.repeat)
    ours_s = best_cpu_seconds(run_identify, args.repeat)
    py_langs = [lang for lang, _ in py_out]
    ours_langs, ours_scores = ours_out[0]
    # identify answers `und` where py3langid's top class is below 5% or `zxx`; accuracy counts top classes.
    agree = sum(a == b or a == "und" for a, b in zip(ours_langs, py_langs))
    max_diff = max(abs(s - p) for s, (_, p) in zip(ours_scores.tolist(), py_out))
    py_acc = sum(lang == label for lang, label in zip(py_langs, labels)) / len(texts)
    ours_acc = sum(lang == label for lang, label in zip(ours_langs, labels)) / len(texts)
    print(f"one-time: py3langid model load {py_load:.2f} s CPU; identify model load {ours_load:.2f} s CPU, "
          f"then its first call {ours_first:.2f} s CPU (numba's compile, or with its cache warm the load of "
          f"the compiled code)")
    print(f"texts: {sum(len(s.encode()) for s in sampled) / len(sampled):.0f} UTF-8 bytes on average")
    print(f"same top language {agree}/{len(texts)}, largest probability difference {max_diff:.1e}")
    print(f"py3langid classify: {len(texts) / py_s:,.0f} texts/s per core, accuracy {py_acc:.3f}")
    print(f"llmpipe identify:   {len(texts) / ours_s:,.0f} texts/s per core, accuracy {ours_acc:.3f}")
    print(f"ratio identify / py3langid: {py_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
