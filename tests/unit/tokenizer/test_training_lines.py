"""The sentences SentencePiece trains on: each document's lines, right-stripped, empty ones left out,
over-long ones cut (none lost)."""

import json

from llm.tokenizer.spm import training_lines


def _one_line_at_a_time(docs, max_len):
    for doc in docs:
        for line in doc.split("\n"):
            line = line.rstrip()
            while line:
                yield line[:max_len]
                line = line[max_len:]


def test_training_lines_are_each_documents_stripped_lines_cut_at_max_len(shared_data):
    docs = [json.loads(line)["text"] for line in (shared_data / "langid_dev.jsonl").open(encoding="utf-8")][:100]
    docs += ["", "\n\n", "  indented\t \r\n\x1c\nend  ", "x" * 250 + "\n" + "é" * 64, "\u3000full-width space\u3000"]
    assert list(training_lines(docs, 64)) == list(_one_line_at_a_time(docs, 64))
    assert list(training_lines(["x" * 250], 64)) == ["x" * 64] * 3 + ["x" * 58]
    assert list(training_lines([" a \n\n  b  \n"], 64)) == [" a", "  b"]
