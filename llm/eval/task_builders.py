"""Task files made from data the project can read offline: question-answer files and a corpus's test split.

- `build_choice_task`: open-answer questions (`question`, `answer`, `answers`, `context` naming the
  category) become multiple choice. The distractors are other answers of the same category (so a
  capital is asked against capitals), drawn with a generator seeded by the seed and the record's id:
  the same files and seed give the same task, whatever the record order. A question whose category
  has too few other answers is left out (counted).
- `build_last_word_task`: documents of a token dataset's split (default `test`, which neither
  training nor early stopping reads) become a LAMBADA-style cloze task: the passage is the text up to
  the document's last sentence-ending word (a word of at least 3 letters followed by `.`, `!` or `?`,
  after a space), at most `max_chars` characters of it, cut at a space; the target is that word. Only
  words the tokenizer encodes in at most `max_pieces` pieces (after a space) are kept, so the task
  measures predicting a word, not spelling one out.

Both write the native shapes of `llm.eval.task_files` (one JSON record per line).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np

from llm import storage, versions
from llm.errors import UserError
from llm.eval.task_files import jsonl_records
from llm.tokenizer.base import Tokenizer, load_tokenizer
from llm.train.data import TokenManifest

# A word of letters, then sentence-ending punctuation, then the end of a line or the text.
_LAST_WORD = re.compile(r" ([A-Za-z]{3,})[.!?][\"')\]]*(?=\s|$)")


def _qa_records(path: Path) -> list[dict]:
    records = []
    for number, record in jsonl_records(path):
        missing = [f for f in ("id", "question", "answer", "context") if not isinstance(record.get(f), str)]
        if missing:
            raise UserError(f"{path}:{number}: a question record needs string field(s) {', '.join(missing)}")
        records.append(record)
    return records


def _choice_context(record: dict) -> str:
    # The category's own words ("given the African, give the capital") say what is asked for.
    hint = record["context"].split(": ", 1)[1] if ": " in record["context"] else ""
    question = f"{record['question']} ({hint})" if hint else record["question"]
    return f"Question: {question}\nAnswer:"


def build_choice_task(qa_file: str | Path, out_file: str | Path, num_choices: int = 4, seed: int = 0) -> dict:
    """Write a multiple-choice task made from the question file `qa_file`; returns counts
    (`written`, `skipped`: questions whose category has fewer than `num_choices - 1` other answers)."""
    if num_choices < 2:
        raise UserError(f"num_choices must be at least 2, got {num_choices}")
    records = _qa_records(Path(qa_file))
    answers_by_category: dict[str, dict[str, str]] = {}
    for r in records:  # distinct answers per category, by their folded form, first spelling kept
        answers_by_category.setdefault(r["context"], {}).setdefault(r["answer"].strip().casefold(), r["answer"].strip())
    written = skipped = 0
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w", encoding="utf-8") as out:
        for r in records:
            accepted = {a.strip().casefold() for a in [r["answer"], *(r.get("answers") or [])] if isinstance(a, str)}
            pool = sorted(text for key, text in answers_by_category[r["context"]].items() if key not in accepted)
            if len(pool) < num_choices - 1:
                skipped += 1
                continue
            rng = random.Random(f"{seed}:{r['id']}")
            choices = rng.sample(pool, num_choices - 1)
            gold = rng.randrange(num_choices)
            choices.insert(gold, r["answer"].strip())
            out.write(json.dumps({"id": r["id"], "context": _choice_context(r), "choices": choices, "gold": gold,
                                  "category": r["context"]}, ensure_ascii=False) + "\n")
            written += 1
    return {"written": written, "skipped": skipped}


def split_documents(tokens_uri: str, split: str = "test"):
    """Yield the token ids of each document of a token dataset's split (without bos and eos)."""
    manifest = TokenManifest.read(tokens_uri)
    if split not in manifest.splits or not any(int(e.get("docs", 1)) for e in manifest.splits[split]):
        raise UserError(f"{tokens_uri}: no documents in split {split!r} (a token dataset made with "
                        "tokenize.test_fraction: 0, or before the test split existed, has no test split)")
    root = versions.split(tokens_uri)[0]
    dtype = np.dtype("<u2") if manifest.dtype == "uint16" else np.dtype("<u4")
    for entry in manifest.splits[split]:
        tokens = np.frombuffer(storage.read_bytes(storage.join(root, entry["bin"])), dtype=dtype)
        starts = np.frombuffer(storage.read_bytes(storage.join(root, entry["idx"])), dtype="<i8")
        for begin, end in zip(starts[:-1], starts[1:]):
            ids = tokens[begin:end].tolist()
            yield [t for t in ids if t not in (manifest.bos_id, manifest.eos_id)]


def last_word_example(text: str, tokenizer: Tokenizer, max_pieces: int, max_chars: int) -> dict | None:
    """{context, target} cut from `text` by the module's rule, None when it has no word that fits."""
    for match in reversed(list(_LAST_WORD.finditer(text))):
        word = match.group(1)
        if len(tokenizer.encode(text[:match.start()] + " " + word)) - len(tokenizer.encode(text[:match.start()])) \
                > max_pieces:
            continue
        context = text[:match.start()]
        if len(context) > max_chars:  # keep the passage's end, from the start of a word
            cut = len(context) - max_chars
            tail = context[cut:]
            context = tail if context[cut - 1].isspace() else tail[tail.find(" ") + 1:] if " " in tail else ""
        if context.strip():
            return {"context": context, "target": word}
    return None


def build_last_word_task(tokens_uri: str, tokenizer_uri: str, out_file: str | Path, split: str = "test",
                         max_pieces: int = 3, max_chars: int = 400, limit: int | None = None) -> dict:
    """Write a last-word cloze task cut from the documents of `tokens_uri`'s `split`, decoded with the
    tokenizer that made them; returns counts (`written`, `skipped`: documents with no fitting word)."""
    tokenizer = load_tokenizer(tokenizer_uri)
    written = skipped = 0
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w", encoding="utf-8") as out:
        for number, ids in enumerate(split_documents(tokens_uri, split)):
            if limit is not None and written >= limit:
                break
            example = last_word_example(tokenizer.decode(ids), tokenizer, max_pieces, max_chars)
            if example is None:
                skipped += 1
                continue
            out.write(json.dumps({"id": f"{split}-{number}", **example}, ensure_ascii=False) + "\n")
            written += 1
    return {"written": written, "skipped": skipped}
