import pyarrow as pa

from llm.config import NormalizeConfig
from llm.data.normalize import NormalizeStep


def _run(texts, **cfg):
    docs = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    return NormalizeStep(NormalizeConfig(**cfg)).apply(docs)


def test_nfc_line_endings_controls_spaces():
    out = _run(["e\u0301t\u00e9\r\nline\rnext\x00\x07\u200b\ufeff", "a\u00a0b\u2009c"])
    assert out.kept.column("text").to_pylist() == ["\u00e9t\u00e9\nline\nnext", "a b c"]


def test_indentation_kept_trailing_space_and_blank_runs_trimmed():
    out = _run(["\n\n  def f():\n\t\treturn 1   \n\n\n\n\n\nx  \n\n"], max_blank_lines=1)
    assert out.kept.column("text").to_pylist() == ["  def f():\n\t\treturn 1\n\nx"]


def test_nfkc_is_configurable():
    assert _run(["\ufb01"], unicode_form="NFKC").kept.column("text").to_pylist() == ["fi"]
    assert _run(["\ufb01"], unicode_form="none").kept.column("text").to_pylist() == ["\ufb01"]


def test_empty_and_short_documents_dropped_with_reason():
    out = _run([" \n\t\n", "ok text", "ab"], min_chars=3)
    assert out.kept.column("id").to_pylist() == ["1"]
    rows = {r["id"]: r for r in out.dropped.to_pylist()}
    assert rows["0"]["rule"] == "empty_after_normalize" and rows["0"]["stage"] == "normalize"
    assert rows["2"]["rule"] == "too_short" and rows["2"]["value"] == 2.0 and rows["2"]["threshold"] == 3.0
    assert out.kept.num_rows + out.dropped.num_rows + out.quarantined.num_rows == 3


def test_rtl_cjk_and_large_text_survive():
    big = "word " * 2_000_000  # 10 MB
    out = _run(["مرحبا بالعالم", "日本語のテキストです", big])
    texts = out.kept.column("text").to_pylist()
    assert texts[0] == "مرحبا بالعالم" and texts[1] == "日本語のテキストです"
    assert len(texts[2]) == len(big) - 1  # only the trailing space goes
