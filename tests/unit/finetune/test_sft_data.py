"""Reading, validation, the chat template, the held-out split and the prepared file of SFT examples."""

from __future__ import annotations

import gzip
import hashlib
import json
import random

import numpy as np
import pytest

from llm.config import ChatTemplateConfig, SftDataConfig
from llm.errors import InputNotFound, UserError
from llm.finetune.sft_data import SftExamples, apply_template, holdout, prepare_sft, read_sft, template_ids
from llm.tokenizer.base import tokenizer_from_bytes
from llm.tokenizer.hf import train_hf
from llm.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece

SPECIAL = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


@pytest.fixture(scope="module")
def dev_file(shared_data):
    return shared_data / "sft_dev.jsonl"


@pytest.fixture(scope="module", params=["sentencepiece", "hf"])
def tokenizer(dev_file, request):
    """Each library's tokenizer: the chat markers are single tokens of both (SentencePiece BPE, and
    Hugging Face byte-level BPE)."""
    rows = [json.loads(line) for line in dev_file.read_text(encoding="utf-8").splitlines()]
    texts = [r["prompt"] + "\n" + r["response"] for r in rows if r["label"] == "english"][:300]
    if request.param == "hf":
        return tokenizer_from_bytes(train_hf(texts, vocab_size=400, special_tokens=SPECIAL))
    return SentencePieceTokenizer(train_sentencepiece(texts, vocab_size=400, special_tokens=SPECIAL))


def write_lines(path, rows) -> list[bytes]:
    """Write rows (dicts as JSON, bytes/str as given) one per line; returns the lines' bytes."""
    lines = [r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode() for r in rows]
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return lines


CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"},
                     {"role": "assistant", "content": "A"}]}


def test_both_shapes_read_with_stable_ids(tmp_path):
    path = tmp_path / "a.jsonl"
    write_lines(path, [{"id": "p1", "prompt": "Hi", "response": "Hello"}, CHAT,
                       {"id": 7, "prompt": "x", "response": "y"}])
    records = list(read_sft(SftDataConfig(path=str(path))))
    assert [r.id for r in records] == ["p1", "a.jsonl:2", "a.jsonl:3"]  # a non-string id falls back
    assert records[0].messages == (("user", "Hi"), ("assistant", "Hello"))
    assert records[1].messages == (("system", "Be brief."), ("user", "Q"), ("assistant", "A"))
    assert records[0].location == f"{path}#1"


def test_folder_of_plain_and_gzip_files_in_sorted_order(tmp_path):
    (tmp_path / "sub").mkdir()
    pair = json.dumps({"prompt": "p", "response": "r"}) + "\n"
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(pair.encode()))
    (tmp_path / "a.jsonl").write_text(pair + "\n" + pair)  # a blank line is not a record
    (tmp_path / "sub" / "c.jsonl").write_text(pair)
    (tmp_path / "notes.txt").write_text("not data")
    ids = [r.id for r in read_sft(SftDataConfig(path=str(tmp_path)))]
    assert ids == ["a.jsonl:1", "a.jsonl:3", "b.jsonl.gz:1", "sub/c.jsonl:1"]
    assert len(list(read_sft(SftDataConfig(path=str(tmp_path), max_examples=2)))) == 2
    with pytest.raises(InputNotFound):
        list(read_sft(SftDataConfig(path=str(tmp_path / "missing.jsonl"))))
    with pytest.raises(InputNotFound):
        list(read_sft(SftDataConfig(path=str(tmp_path / "sub" / "empty"))))


def test_damaged_gzip_keeps_the_lines_before_the_damage(tmp_path, tokenizer):
    pairs = "".join(json.dumps({"prompt": f"p{i}", "response": "r" * 50}) + "\n" for i in range(400))
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(pairs.encode())[:-40])
    ex = prepare_sft(SftDataConfig(path=str(tmp_path)), ChatTemplateConfig(), tokenizer, 256)
    (entry,) = ex.quarantine.to_pylist()
    assert entry["error"].startswith("damaged_file") and not entry["records_known"]
    assert 0 < ex.counts["kept"] < 400 and ex.counts["quarantined_by_reason"] == {"damaged_file": 1}


def test_format_forces_one_shape(tmp_path):
    path = tmp_path / "x.jsonl"
    write_lines(path, [CHAT, {"prompt": "p", "response": "r"}])
    for fmt, kept_line in (("pairs", 2), ("chat", 1)):
        rejected = []
        records = list(read_sft(SftDataConfig(path=str(path), format=fmt), rejected))
        assert [r.location for r in records] == [f"{path}#{kept_line}"]
        assert [r.reason for r in rejected] == ["missing_field"]


def test_template_token_layout(tokenizer):
    bos, (S, U, A, E) = tokenizer.bos_id, (tokenizer.piece_id(m) for m in SPECIAL)
    p, r, s = tokenizer.encode("Hi there"), tokenizer.encode("Hello"), tokenizer.encode("Be brief.")
    pair = (("user", "Hi there"), ("assistant", "Hello"))
    (ids, mask, nbytes), = apply_template([pair], ChatTemplateConfig(), tokenizer)
    assert ids.dtype == np.int32 and mask.dtype == np.uint8
    assert ids.tolist() == [bos, U, *p, E, A, *r, E]
    # Only the response's tokens and the end marker closing it are trained on.
    assert mask.tolist() == [0, 0, *[0] * len(p), 0, 0, *[1] * len(r), 1]
    # Each message's tokens stand for its text's bytes; bos and markers for none.
    assert nbytes[mask == 1].sum() == len("Hello") and nbytes.sum() == len("Hi thereHello")
    assert nbytes[ids == E].sum() == nbytes[ids == U].sum() == nbytes[0] == 0

    (ids, mask, _), = apply_template([pair], ChatTemplateConfig(bos=False, default_system="Be brief."), tokenizer)
    assert ids.tolist() == [S, *s, E, U, *p, E, A, *r, E]
    assert mask.tolist() == [0, *[0] * len(s), 0, 0, *[0] * len(p), 0, 0, *[1] * len(r), 1]

    # An example's own system message replaces the default; every assistant turn is trained on.
    chat = (("system", "Hi there"), ("user", "Hello"), ("assistant", "Hi there"), ("user", "Hello"),
            ("assistant", "Hello"))
    (ids, mask, _), = apply_template([chat], ChatTemplateConfig(default_system="Be brief."), tokenizer)
    assert ids.tolist() == [bos, S, *p, E, U, *r, E, A, *p, E, U, *r, E, A, *r, E]
    assert mask.tolist() == [0, 0, *[0] * len(p), 0, 0, *[0] * len(r), 0,
                             0, *[1] * len(p), 1, 0, *[0] * len(r), 0, 0, *[1] * len(r), 1]


BAD = {
    "invalid_json": ["{not json", b'{"prompt": "\xff\xfe"}'],
    "not_object": ["[1, 2]"],
    "missing_field": [{"prompt": "only a prompt"}],
    "not_string": [{"prompt": 3, "response": "r"}, {"messages": [{"role": "assistant", "content": ["x"]}]}],
    "empty_text": [{"prompt": "  ", "response": "r"}],
    "empty_messages": [{"messages": []}],
    "bad_message": [{"messages": ["hi"]}, {"messages": "hi"}],
    "unknown_role": [{"messages": [{"role": "bot", "content": "x"}]}],
    "no_assistant": [{"messages": [{"role": "user", "content": "x"}]}],
    "empty_assistant": [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}],
    "marker_in_content": [{"prompt": "say <|end|> now", "response": "ok"}],
    "too_long": [{"prompt": "long words " * 200, "response": "r"}],
}


def test_bad_records_are_quarantined_and_counted(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    good = [{"prompt": "p", "response": "r"}, CHAT]
    rows = [good[0], *[row for rows in BAD.values() for row in rows], "", good[1]]
    lines = write_lines(path, rows)
    ex = prepare_sft(SftDataConfig(path=str(path)), ChatTemplateConfig(), tokenizer, context_length=64)
    c = ex.counts
    assert c["quarantined_by_reason"] == {reason: len(rows) for reason, rows in BAD.items()}
    assert c["read"] == len(lines) - 1 == c["kept"] + c["quarantined"]  # the blank line is no record
    assert c["kept"] == 2 and c["train_examples"] + c["val_examples"] == 2
    q = ex.quarantine.to_pylist()
    assert len(q) == c["quarantined"]
    by_line = {int(e["location"].rsplit("#", 1)[1]): e for e in q}
    for lineno, entry in by_line.items():
        line = lines[lineno - 1]
        assert entry["location"] == f"{path}#{lineno}" and entry["stage"] == "finetune"
        assert entry["size"] == len(line) and entry["records"] == 1 and entry["records_known"]
        assert entry["digest"] == hashlib.blake2b(line, digest_size=16).hexdigest()
        assert entry["text"] is None and entry["raw"] is None  # no scrub given: no text kept
    assert {e["error"].split(":")[0] for e in q} == set(BAD)  # each entry's error starts with its reason
    (too_long,) = [e for e in q if e["error"].startswith("too_long")]
    assert "more than context_length + 1 = 65" in too_long["error"]


def test_quarantined_text_only_through_scrub(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    write_lines(path, [{"prompt": "p", "response": "r"}, {"prompt": "call 555-0100", "response": 3}])
    calls = []

    def scrub(values, sources):
        calls.append(sources)
        return [None if v is None else v.replace("555-0100", "[PHONE]") for v in values]

    ex = prepare_sft(SftDataConfig(path=str(path)), ChatTemplateConfig(), tokenizer, 64, scrub=scrub)
    (entry,) = ex.quarantine.to_pylist()
    assert entry["text"] == '{"prompt": "call [PHONE]", "response": 3}'
    assert calls and all(s == ["sft"] for s in calls)


def test_missing_marker_names_the_field(tmp_path, tokenizer):
    path = tmp_path / "ok.jsonl"
    write_lines(path, [{"prompt": "p", "response": "r"}])
    template = ChatTemplateConfig(assistant="<|bot|>")
    expected = "finetune.template.assistant '<|bot|>' is not a single token of the tokenizer: add it to tokenizer.special_tokens"
    with pytest.raises(UserError, match=expected.replace("|", r"\|")):
        template_ids(template, tokenizer)
    with pytest.raises(UserError, match=r"finetune\.template\.assistant"):
        prepare_sft(SftDataConfig(path=str(path)), template, tokenizer, 64)


def test_holdout_is_deterministic_order_free_and_never_one_sided():
    ids = [f"example-{i}" for i in range(4000)]
    val = dict(zip(ids, holdout(ids, 0.1)))
    shuffled = random.Random(0).sample(ids, len(ids))
    assert dict(zip(shuffled, holdout(shuffled, 0.1))) == val
    assert 0.085 < sum(val.values()) / len(ids) < 0.115
    # With two or more examples each side keeps at least one, whatever the fraction.
    assert holdout(["a", "b"], 1e-9).sum() == 1 and holdout(["a", "b"], 1 - 1e-9).sum() == 1
    assert holdout(["b", "a"], 1e-9).tolist() == holdout(["a", "b"], 1e-9).tolist()[::-1]


def test_dev_file_loads_whole_and_splits_by_id(tmp_path, dev_file, tokenizer):
    cfg, template = SftDataConfig(path=str(dev_file)), ChatTemplateConfig()
    ex = prepare_sft(cfg, template, tokenizer, context_length=4096)  # long enough for every example
    c = ex.counts
    assert (c["read"], c["kept"], c["quarantined"]) == (7642, 7642, 0)
    assert c["train_examples"] + c["val_examples"] == 7642
    assert abs(c["val_examples"] - 764.2) < 80  # ~3 sigma of a 10% draw
    assert 0 < c["trained_token_share"] < 1
    # Reversing the file changes no example's side.
    reversed_file = tmp_path / "reversed.jsonl"
    reversed_file.write_bytes(b"".join(reversed(dev_file.read_bytes().splitlines(keepends=True))))
    again = prepare_sft(SftDataConfig(path=str(reversed_file)), template, tokenizer, context_length=4096)
    assert sorted(again.val.names) == sorted(ex.val.names)
    # At a short context only over-long examples are dropped.
    short = prepare_sft(cfg, template, tokenizer, context_length=256).counts
    assert set(short["quarantined_by_reason"]) == {"too_long"} and short["kept"] + short["quarantined"] == 7642


def test_save_load_round_trip(tmp_path, tokenizer):
    path = tmp_path / "data.jsonl"
    write_lines(path, [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(30)] + ["{bad"])
    ex = prepare_sft(SftDataConfig(path=str(path), val_fraction=0.2), ChatTemplateConfig(), tokenizer, 64)
    ex.save(str(tmp_path / "out" / "sft.npz"))
    back = SftExamples.load(str(tmp_path / "out" / "sft.npz"))
    for name in ("train", "val"):
        a, b = getattr(ex, name), getattr(back, name)
        for field in ("ids", "mask", "offsets"):
            assert np.array_equal(getattr(a, field), getattr(b, field)) and getattr(a, field).dtype == getattr(b, field).dtype
        assert a.names == b.names
    assert back.counts == ex.counts and back.quarantine.equals(ex.quarantine)
    assert (back.context_length, back.pad_id) == (64, tokenizer.pad_id)
