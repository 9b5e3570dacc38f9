"""The MinHash kernels built ahead of time: the same results as numba's, every argument converted to
the declared signature first, no numba in a process that only uses them, and numba's kernels whenever
no extension can be built."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from llm import aot
from llm.data.minhash import jit_kernels, kernels
from llm.data.minhash.shingles import _CHAR_POS, _NGRAM_POS, _char_classes, _lower_table, char_shingles, word_shingles
from llm.data.minhash.signatures import MinHasher, band_hashes
from llm.data.textsignals import utf8_buffers

REPO = Path(__file__).resolve().parents[4]
has_compiler = shutil.which(sysconfig.get_config_var("CC").split()[0] if sysconfig.get_config_var("CC") else "cc")
needs_compiler = pytest.mark.skipif(not has_compiler, reason="no C compiler: the extension cannot be built here")


@pytest.fixture(scope="module")
def texts(shared_data) -> list[str]:
    out = []
    for name in ("mail_dev.jsonl", "langid_dev.jsonl", "sft_dev.jsonl"):
        for line in (shared_data / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            out += [row[k] for k in ("text", "response", "prompt") if isinstance(row.get(k), str)]
    return out + ["", "İstanbul ŞEHİR ǅemal", "中文字符 และภาษาไทย", "x" * 3]


@needs_compiler
def test_built_kernels_are_in_use_and_equal_numbas(texts):
    assert kernels.IMPLEMENTATION == "ahead-of-time"
    data, offsets = utf8_buffers(texts)
    lower = _lower_table()
    codes, ends = kernels.decode_lower(data, offsets, *lower)
    want = jit_kernels.decode_lower(data, offsets.astype(np.int64), *lower)
    assert np.array_equal(codes, want[0]) and np.array_equal(ends, want[1])
    spans = kernels.tokenize(codes, ends, _char_classes(), _CHAR_POS)
    for got, exp in zip(spans, jit_kernels.tokenize(codes, ends, _char_classes(), _CHAR_POS)):
        assert np.array_equal(got, exp)
    hashes, starts, lengths, token_ends = spans
    units = kernels.char_units(codes, starts, lengths, token_ends)
    for got, exp in zip(units, jit_kernels.char_units(codes, starts, lengths, token_ends)):
        assert np.array_equal(got, exp)
    for n in (1, 5, 13):
        for got, exp in zip(kernels.ngram_hashes(hashes, token_ends, n, _NGRAM_POS),
                            jit_kernels.ngram_hashes(hashes, token_ends, n, _NGRAM_POS)):
            assert np.array_equal(got, exp)
    batch = word_shingles(texts, 5)
    hasher = MinHasher(112, seed=3)
    sig = hasher.signatures(batch)
    assert np.array_equal(sig, jit_kernels.minhash(batch.hashes, batch.offsets, hasher.a, hasher.b, np.uint64(2**64 - 1)))
    assert np.array_equal(band_hashes(sig, 14, 8), jit_kernels.band_hashes(sig, 14, 8))
    rows = np.arange(len(texts) - 1, dtype=np.int64)
    other = char_shingles(texts, 5)
    for a, b in ((batch, batch), (batch, other)):
        args = (a.hashes, a.offsets, rows, b.hashes, b.offsets, rows[::-1].copy())
        assert np.array_equal(kernels.pair_jaccard(*args), jit_kernels.pair_jaccard(*args))


def test_arguments_are_converted_to_the_signature_not_misread():
    # an int32 array, a list and a strided view where uint64 / int64 C arrays are declared
    shingles = np.array([5, 9, 11, 2], np.int32)
    a, b = np.array([3, 7], np.uint64), np.array([1, 0], np.uint64)
    want = jit_kernels.minhash(shingles.astype(np.uint64), np.array([0, 2, 4]), a, b, np.uint64(7))
    assert np.array_equal(kernels.minhash(shingles, [0, 2, 4], a, b, 7), want)
    strided = np.arange(8, dtype=np.uint64)[::2]
    assert np.array_equal(kernels.minhash(strided, np.array([0, 4], np.int32), a, b, 7),
                          jit_kernels.minhash(strided.copy(), np.array([0, 4]), a, b, np.uint64(7)))
    with pytest.raises(ValueError, match="dimensions"):
        kernels.band_hashes(np.zeros(4, np.uint64), 1, 1)
    with pytest.raises(TypeError, match="arguments"):
        kernels.minhash(shingles, [0, 4], a, b)


@needs_compiler
def test_a_process_using_the_stage_kernels_never_imports_numba(tmp_path):
    code = ("import sys, json\n"
            "from llm.data.minhash.stage import run_minhash_dedup\n"
            "from llm.data.minhash.shingles import word_shingles\n"
            "from llm.data.minhash.signatures import MinHasher\n"
            "from llm.data.minhash import kernels\n"
            "b = word_shingles(['one two three four five six seven', 'one two three four five six eight'], 5)\n"
            "s = MinHasher(16, 1).signatures(b)\n"
            "print(json.dumps([kernels.IMPLEMENTATION, 'numba' in sys.modules, int((s[0] == s[1]).sum())]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    implementation, numba_loaded, equal = json.loads(out.stdout.splitlines()[-1])
    assert implementation == "ahead-of-time" and numba_loaded is False and 0 < equal < 16
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "LLMPIPE_AOT": "0"})
    assert off.returncode == 0, off.stderr[-2000:]
    assert json.loads(off.stdout.splitlines()[-1]) == ["numba", True, equal]  # numba's kernels, same result


@needs_compiler
def test_an_extension_is_built_once_per_source_and_a_failed_build_falls_back(tmp_path):
    source = tmp_path / "copy_kernels.py"
    shutil.copy(jit_kernels.__file__, source)
    wanted = {"minhash": kernels.SIGNATURES["minhash"]}
    built = aot.load(str(source), wanted, lambda: jit_kernels)
    assert built is not None
    (so,) = (tmp_path / "__pycache__").glob("copy_kernels_aot_*")
    x = np.arange(6, dtype=np.uint64)
    args = (x, np.array([0, 3, 6]), np.array([5], np.uint64), np.array([2], np.uint64), np.uint64(9))
    assert np.array_equal(built.minhash(*args), jit_kernels.minhash(*args))
    stamp = so.stat().st_mtime_ns
    assert aot.load(str(source), wanted, lambda: pytest.fail("built again")) is not None
    assert so.stat().st_mtime_ns == stamp
    source.write_text(source.read_text() + "\n# changed\n")  # another source: another extension

    def broken():
        raise RuntimeError("no compiler")

    assert aot.load(str(source), wanted, broken) is None  # the caller then uses numba's kernels
    (note,) = (tmp_path / "__pycache__").glob("copy_kernels_aot_*.failed")
    assert "no compiler" in note.read_text()
    assert aot.load(str(source), wanted, lambda: pytest.fail("tried again")) is None  # not retried
    assert len(list((tmp_path / "__pycache__").glob("copy_kernels_aot_*.so"))) == 1
