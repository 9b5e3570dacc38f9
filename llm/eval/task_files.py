"""Downstream task files: JSONL in lm-evaluation-harness's shapes, read into multiple-choice or cloze examples.

A task is one `NAME.jsonl` file. Its shape is told by the fields of its records, or by a task spec
`NAME.yaml` (or `NAME.json`) beside it, `shape: hellaswag` for example. Shapes:

| shape            | fields                                          | kind            |
| ---------------- | ----------------------------------------------- | --------------- |
| `multiple_choice`| `context`, `choices` (list), `gold` (index)     | multiple choice |
| `cloze`          | `context`, `target`                             | cloze           |
| `hellaswag`      | `ctx_a`, `ctx_b` (or `ctx`), `endings`, `label` | multiple choice |
| `arc`            | `question`, `choices{text,label}`, `answerKey`  | multiple choice |
| `lambada`        | `text` (its last word is the target)            | cloze           |

The texts become what lm-eval's own tasks of that name score: HellaSwag's context is
`activity_label: ctx_a Ctx_b` and its endings are cleaned of WikiHow's bracket artifacts; ARC's is
`Question: ...\\nAnswer:`; LAMBADA's target is the text after its last space. A choice or target is
scored after the target delimiter " " (LAMBADA's target carries its own space).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm.errors import InputNotFound, UserError

TARGET_DELIMITER = " "
MULTIPLE_CHOICE, CLOZE = "multiple_choice", "cloze"


@dataclass(frozen=True)
class ChoiceExample:
    """A context, the choice texts (as shown, without the delimiter) and the index of the right one."""

    context: str
    choices: list[str]
    gold: int


@dataclass(frozen=True)
class ClozeExample:
    """A context and the continuation to predict, delimiter included (" Paris")."""

    context: str
    target: str


@dataclass(frozen=True)
class TaskData:
    """A task read from `path`: its name (the file's stem), shape, kind and examples."""

    name: str
    path: str
    shape: str
    kind: str
    examples: list


class TaskSpec(BaseModel):
    """A task file's spec, `NAME.yaml` or `NAME.json` beside `NAME.jsonl`."""

    model_config = ConfigDict(extra="forbid")

    shape: Literal["multiple_choice", "cloze", "hellaswag", "arc", "lambada"] = Field(
        ..., description="How to read the records (see the module docstring for each shape's fields).")
    name: str | None = Field(None, description="The task's name in results (default: the file's stem).")
    description: str | None = Field(None, description="What the task is, for people reading the folder.")


def _require(record: dict, *fields: str) -> None:
    missing = [f for f in fields if f not in record]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")


def _native_choice(r: dict) -> ChoiceExample:
    _require(r, "context", "choices", "gold")
    return _checked_choice(r["context"], r["choices"], r["gold"], "gold")


def _native_cloze(r: dict) -> ClozeExample:
    _require(r, "context", "target")
    if not isinstance(r["target"], str) or not r["target"].strip():
        raise ValueError("'target' must be a non-empty string")
    return ClozeExample(str(r["context"]), TARGET_DELIMITER + r["target"])


def hellaswag_text(text: str) -> str:
    """lm-eval's HellaSwag cleaning: WikiHow's ' [title]' becomes '. ', other [brackets] go, double spaces halve."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(r: dict) -> ChoiceExample:
    _require(r, "endings", "label")
    if "ctx_a" in r and "ctx_b" in r:
        ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
    elif "ctx" in r:
        ctx = r["ctx"]
    else:
        raise ValueError("missing field(s) ctx_a and ctx_b (or ctx)")
    query = r["activity_label"] + ": " + ctx if r.get("activity_label") else ctx
    if not isinstance(r["endings"], list):
        raise ValueError("'endings' must be a list of strings")
    label = r["label"]
    if isinstance(label, str) and not label.strip().isdigit():
        raise ValueError(f"'label' must be an index, got {label!r} (HellaSwag's test split has no labels)")
    return _checked_choice(hellaswag_text(query), [hellaswag_text(str(e)) for e in r["endings"]], int(label), "label")


def _arc(r: dict) -> ChoiceExample:
    _require(r, "question", "choices", "answerKey")
    choices = r["choices"]
    if not isinstance(choices, dict) or not {"text", "label"} <= set(choices):
        raise ValueError("'choices' must be an object with 'text' and 'label' lists")
    labels = [str(x) for x in choices["label"]]
    if str(r["answerKey"]) not in labels:
        raise ValueError(f"answerKey {r['answerKey']!r} is not one of the labels {labels}")
    return _checked_choice(f"Question: {r['question']}\nAnswer:", choices["text"], labels.index(str(r["answerKey"])),
                           "answerKey")


def _lambada(r: dict) -> ClozeExample:
    _require(r, "text")
    words = str(r["text"]).split(" ")
    if len(words) < 2 or not words[-1]:
        raise ValueError("'text' needs a context and a last word after a space")
    return ClozeExample(" ".join(words[:-1]), " " + words[-1])


def _checked_choice(context: Any, choices: Any, gold: Any, gold_field: str) -> ChoiceExample:
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise ValueError("the choices must be a list of at least two non-empty strings")
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise ValueError(f"'{gold_field}' must be an index into the {len(choices)} choices, got {gold!r}")
    return ChoiceExample(str(context), list(choices), gold)


SHAPES: dict[str, tuple[str, Callable[[dict], Any]]] = {
    "multiple_choice": (MULTIPLE_CHOICE, _native_choice),
    "cloze": (CLOZE, _native_cloze),
    "hellaswag": (MULTIPLE_CHOICE, _hellaswag),
    "arc": (MULTIPLE_CHOICE, _arc),
    "lambada": (CLOZE, _lambada),
}


def detect_shape(record: dict) -> str | None:
    """The shape a record's fields say, None when they fit none."""
    fields = set(record)
    if "endings" in fields and fields & {"ctx", "ctx_a"}:
        return "hellaswag"
    if {"question", "answerKey"} <= fields and isinstance(record.get("choices"), dict):
        return "arc"
    if {"choices", "gold"} <= fields:
        return "multiple_choice"
    if "target" in fields:
        return "cloze"
    if "text" in fields:
        return "lambada"
    return None


def read_spec(task_file: Path) -> TaskSpec | None:
    """The spec beside `task_file` (`.yaml`, `.yml` or `.json` of the same stem), None when there is none."""
    for suffix in (".yaml", ".yml", ".json"):
        path = task_file.with_suffix(suffix)
        if path.is_file():
            import yaml

            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
                return TaskSpec.model_validate(data if data is not None else {})
            except (yaml.YAMLError, ValidationError) as exc:
                raise UserError(f"{path}: not a valid task spec: {exc}") from None
    return None


def jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of each non-blank line of a JSONL file; a line that is not a JSON object is a
    `UserError` naming the file and line."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number}: not a JSON record ({exc.msg})") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{number}: a record must be a JSON object, got {type(record).__name__}")
            yield number, record


def read_task(path: str | Path, limit: int | None = None) -> TaskData:
    """Read the task file `path` (its first `limit` records when given); a bad record is a `UserError`
    naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"{path}: no such task file")
    spec = read_spec(path)
    shape = spec.shape if spec else None
    examples: list = []
    for number, record in jsonl_records(path):
        if shape is None:
            shape = detect_shape(record)
            if shape is None:
                raise UserError(f"{path}:{number}: cannot tell the task's shape from the fields "
                                f"{sorted(record)}; expected those of one of {sorted(SHAPES)}, or a "
                                f"{path.stem}.yaml beside it saying `shape: ...`")
        try:
            examples.append(SHAPES[shape][1](record))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise UserError(f"{path}:{number}: not a {shape} record: {exc}") from None
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise UserError(f"{path}: no records")
    return TaskData(spec.name if spec and spec.name else path.stem, str(path), shape, SHAPES[shape][0], examples)


def task_files(folder: str | Path) -> list[Path]:
    """The task files (`*.jsonl`) directly in `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputNotFound(f"{folder}: no such task folder")
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise UserError(f"{folder}: no task files (*.jsonl) in the folder")
    return files
