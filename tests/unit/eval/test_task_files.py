"""Task files: each lm-eval shape read into the texts lm-eval's own task would score, the shape told by
the fields or by a spec, bad records named by file and line; the builders' tasks from real data."""

import json

import pytest

from llm.errors import UserError
from llm.eval.task_builders import build_choice_task, build_last_word_task, last_word_example
from llm.eval.task_files import ChoiceExample, ClozeExample, detect_shape, read_task, task_files

HELLASWAG = {"ind": 4, "activity_label": "Removing ice from car",
             "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter "
                      "clothes smiles.", "ctx_b": "then", "ctx": "ignored when ctx_a and ctx_b are there",
             "endings": [", the man adds wax to the windshield and cuts it.",
                         ", a person board a ski lift, while two men supporting the head of the person wearing "
                         "winter clothes snow as the we girls sled.",
                         ", the man puts on a christmas coat, knitted with netting.",
                         ", the man continues removing the snow on his car."], "label": "3"}
WIKIHOW = {"activity_label": "Home and Garden", "ctx_a": "[header] How to grow tomatoes [title] Pick a sunny spot.",
           "ctx_b": "[step] tomatoes need", "endings": ["six hours of sun [substeps] a day.", "water [title] daily."],
           "label": 0}
ARC = {"id": "Mercury_7175875", "question": "An astronomer observes that a planet rotates faster after a meteorite "
       "impact. Which is the most likely effect of this increase in rotation?",
       "choices": {"text": ["Planetary density will decrease.", "Planetary years will become longer.",
                            "Planetary days will become shorter.", "Planetary gravity will become stronger."],
                   "label": ["A", "B", "C", "D"]}, "answerKey": "C"}
LAMBADA = {"text": "in my palm is a clear stone , and inside it is a small ivory statuette . a guardian angel . "
                   "`` figured if you 're going to be out at night getting hit by cars , you might as well have "
                   "some backup . '' i look at him , feeling stunned . like this is some sort of sign"}


def _write(folder, name, records, spec=None):
    path = folder / f"{name}.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    if spec is not None:
        (folder / f"{name}.yaml").write_text(spec)
    return path


def test_hellaswag_is_read_as_lm_evals_own_preprocessing_makes_it(tmp_path):
    from lm_eval.tasks.hellaswag.utils import preprocess  # lm-eval's own HellaSwag cleaning

    task = read_task(_write(tmp_path, "hs", [HELLASWAG, WIKIHOW]))
    assert (task.shape, task.kind) == ("hellaswag", "multiple_choice")
    for record, ex in zip([HELLASWAG, WIKIHOW], task.examples):
        ctx = record["ctx_a"] + " " + record["ctx_b"].capitalize()
        assert ex.context == preprocess(record["activity_label"] + ": " + ctx)
        assert ex.choices == [preprocess(e) for e in record["endings"]]
        assert ex.gold == int(record["label"])
    assert task.examples[1].context == "Home and Garden: How to grow tomatoes. Pick a sunny spot. tomatoes need"
    assert task.examples[1].choices == ["six hours of sun a day.", "water. daily."]


def test_arc_lambada_and_native_shapes(tmp_path):
    arc = read_task(_write(tmp_path, "arc", [ARC]))
    assert arc.shape == "arc"
    assert arc.examples == [ChoiceExample(f"Question: {ARC['question']}\nAnswer:", ARC["choices"]["text"], 2)]
    lam = read_task(_write(tmp_path, "lam", [LAMBADA]))
    assert (lam.shape, lam.kind) == ("lambada", "cloze")
    assert lam.examples[0].target == " sign" and lam.examples[0].context == LAMBADA["text"][:-len(" sign")]
    native = read_task(_write(tmp_path, "mine", [{"context": "2 + 2 =", "choices": ["4", "5"], "gold": 0}]))
    assert native.examples == [ChoiceExample("2 + 2 =", ["4", "5"], 0)]
    cloze = read_task(_write(tmp_path, "fill", [{"context": "The capital of France is", "target": "Paris"}]))
    assert cloze.examples == [ClozeExample("The capital of France is", " Paris")]
    assert [p.name for p in task_files(tmp_path)] == ["arc.jsonl", "fill.jsonl", "lam.jsonl", "mine.jsonl"]


def test_a_spec_beside_the_file_names_the_shape_and_the_task(tmp_path):
    # A record with `text` and `target` would be read as native cloze; the spec says LAMBADA.
    path = _write(tmp_path, "t", [{"text": "a b c", "target": "x"}], spec="shape: lambada\nname: my_lambada\n")
    assert detect_shape({"text": "a b c", "target": "x"}) == "cloze"
    task = read_task(path)
    assert (task.name, task.shape, task.examples[0].target) == ("my_lambada", "lambada", " c")
    _write(tmp_path, "bad", [{"text": "a b"}], spec="shape: squad\n")
    with pytest.raises(UserError, match=r"bad\.yaml: not a valid task spec"):
        read_task(tmp_path / "bad.jsonl")


@pytest.mark.parametrize("records, message", [
    ([{"context": "a", "choices": ["x", "y"], "gold": 0}, "{not json"], r"t\.jsonl:2: not a JSON record"),
    ([{"context": "a", "choices": ["x", "y"], "gold": 0}, {"context": "a", "choices": ["x", "y"], "gold": 2}],
     r"t\.jsonl:2: not a multiple_choice record: 'gold' must be an index into the 2 choices"),
    ([{"context": "a", "choices": ["x", "y"], "gold": 0}, {"context": "a", "gold": 0}],
     r"t\.jsonl:2: .*missing field\(s\) choices"),
    ([{"context": "a", "choices": ["x", ""], "gold": 0}], r"t\.jsonl:1: .*at least two non-empty strings"),
    ([{"question": "q", "answer": "a"}], r"t\.jsonl:1: cannot tell the task's shape from the fields"),
    ([dict(HELLASWAG, label="")], r"t\.jsonl:1: .*HellaSwag's test split has no labels"),
    ([dict(ARC, answerKey="E")], r"t\.jsonl:1: .*answerKey 'E' is not one of the labels"),
    ([["a", "list"]], r"t\.jsonl:1: a record must be a JSON object"),
    ([], r"t\.jsonl: no records"),
])
def test_bad_records_name_the_file_and_line(tmp_path, records, message):
    with pytest.raises(UserError, match=message):
        read_task(_write(tmp_path, "t", records))


def test_a_folder_without_task_files_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no task files"):
        task_files(tmp_path)
    with pytest.raises(UserError, match="no such task folder"):
        task_files(tmp_path / "missing")


def test_multiple_choice_from_real_questions_is_deterministic_and_drawn_within_the_category(shared_data, tmp_path):
    qa = shared_data / "eval" / "quiz_bsdgames.jsonl"
    counts = build_choice_task(qa, tmp_path / "a.jsonl", seed=0)
    build_choice_task(qa, tmp_path / "b.jsonl", seed=0)
    build_choice_task(qa, tmp_path / "c.jsonl", seed=1)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()
    source = {r["id"]: r for r in map(json.loads, qa.read_text().splitlines())}
    answers = {}
    for r in source.values():
        answers.setdefault(r["context"], set()).add(r["answer"].strip())
    built = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert counts["written"] == len(built) and counts["written"] + counts["skipped"] == len(source)
    assert counts["written"] > 2000
    for ex in built:
        record = source[ex["id"]]
        assert ex["choices"][ex["gold"]] == record["answer"].strip()
        assert len({c.casefold() for c in ex["choices"]}) == 4
        assert set(ex["choices"]) <= answers[record["context"]]  # distractors: answers of the same category
        assert record["question"] in ex["context"]
    assert len({ex["gold"] for ex in built}) == 4  # the right answer is not always in one place
    task = read_task(tmp_path / "a.jsonl")
    assert task.shape == "multiple_choice" and len(task.examples) == len(built)


def test_last_word_passages_come_from_the_test_split(shared_data, tmp_path):
    from llm.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece
    from llm.train.data import write_token_dataset

    book = (shared_data / "books" / "pg11_alice_in_wonderland.txt").read_text(encoding="utf-8", errors="replace")
    paragraphs = [p.replace("\n", " ") for p in book.split("\n\n") if len(p) > 200][:120]
    tok = SentencePieceTokenizer(train_sentencepiece(paragraphs, 800))
    (tmp_path / "spm.model").write_bytes(tok.model_proto)
    docs = [[tok.bos_id, *ids, tok.eos_id] for ids in tok.encode_batch(paragraphs)]
    write_token_dataset(str(tmp_path / "tokens"), {"train": docs[:100], "val": docs[100:110], "test": docs[110:]},
                        vocab_size=tok.vocab_size)
    counts = build_last_word_task(str(tmp_path / "tokens"), str(tmp_path / "spm.model"), tmp_path / "lw.jsonl",
                                  max_pieces=2, max_chars=300)
    built = [json.loads(line) for line in (tmp_path / "lw.jsonl").read_text().splitlines()]
    assert counts["written"] == len(built) > 5 and counts["written"] + counts["skipped"] == 10
    test_texts = paragraphs[110:]
    for ex in built:
        assert any(ex["context"] + " " + ex["target"] in t for t in test_texts)  # a test passage, cut at its word
        assert ex["target"].isalpha() and len(ex["target"]) >= 3 and len(ex["context"]) <= 300
        word = tok.encode(ex["context"] + " " + ex["target"])[len(tok.encode(ex["context"])):]
        assert len(word) <= 2
    assert read_task(tmp_path / "lw.jsonl").kind == "cloze"
    from flows.cli import main

    assert main(["build-tasks", str(tmp_path / "cli"), "--tokens", str(tmp_path / "tokens"), "--tokenizer",
                 str(tmp_path / "spm.model"), "--max-pieces", "2"]) == 0
    from_cli = [json.loads(line) for line in (tmp_path / "cli" / "last_word_test.jsonl").read_text().splitlines()]
    assert [ex["target"] for ex in from_cli] == [ex["target"] for ex in built]  # longer passages, same words
    with pytest.raises(UserError, match="no documents in split 'test'"):
        write_token_dataset(str(tmp_path / "no-test"), {"train": docs}, vocab_size=tok.vocab_size)
        build_last_word_task(str(tmp_path / "no-test"), str(tmp_path / "spm.model"), tmp_path / "x.jsonl")


def test_the_last_word_rule(tmp_path):
    from llm.tokenizer.spm import SentencePieceTokenizer, train_sentencepiece

    tok = SentencePieceTokenizer(train_sentencepiece(["the cat sat on the mat. a dog ran home!"] * 20, 300))
    assert last_word_example("the cat sat on the mat. x = 1", tok, 8, 100) == {"context": "the cat sat on the",
                                                                               "target": "mat"}
    assert last_word_example("print(x)", tok, 8, 100) is None  # no sentence-ending word: left out
    long = last_word_example("one two three four five six seven eight nine ten.", tok, 8, 20)
    assert long["target"] == "ten" and long["context"] == "six seven eight nine"  # cut at a space


@pytest.mark.parametrize("checkpoint, work_dir", [
    ("work/demo/train/runs/abc/final", "work/demo"),
    ("s3://bucket/work/finetune/runs/abc/final/", "s3://bucket/work"),
    ("train/runs/abc/final", "."),
    ("exported/ckpt", None),
])
def test_eval_tasks_finds_the_work_directory_a_checkpoint_lies_under(checkpoint, work_dir):
    from flows.task_commands import work_dir_of

    assert work_dir_of(checkpoint) == work_dir
