"""A blind side-by-side rating session of two models: prompts, both models' answers, and the ratings.

Everything lives in one folder, `<work_dir>/rate/<model_a>-vs-<model_b>-<id>/`, whose id is a digest of
both models' weights, the prompts, the decoding settings and the tokenizer override, so running the same
comparison again continues it:

    session.json          the models, the prompts, and which model each prompt shows on the left (as A)
    answers-model_a.json  the answers, generated once (a restart reuses them)
    answers-model_b.json
    ratings.jsonl         one line per rating, appended as the rater picks: the side picked, the model it
                          maps back to, the note
    summary.json / .md    counts, win rates and Bradley-Terry scores (`llm.eval.rating_summary`)

The left/right order is drawn per session from the seed, balanced (half the prompts show model_a on the
left), and kept server-side: the page only ever sees "A" and "B".
"""

from __future__ import annotations

import fcntl
import json
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from llm import storage
from llm.config import stable_hash
from llm.errors import InputNotFound, UserError
from llm.eval.rating_models import Decoding, RatedModel, generate_answers

RATE_DIR = "rate"
SESSION_FILE, RATINGS_FILE = "session.json", "ratings.jsonl"
#: The two models, in the order of the command line (MODEL_A MODEL_B).
MODELS = ("model_a", "model_b")
#: What a rater can pick on the page: the answer labelled A, the one labelled B, or neither.
CHOICES = ("A", "B", "tie")
#: Longest note kept with a rating, in characters.
MAX_NOTE = 2000


class AlreadyRated(UserError):
    """A rating for a prompt that has one already (a second tab, a double submit)."""


def load_prompts(path: str) -> list[str]:
    """The prompts of a file: JSONL (a `{"prompt": ...}` object or a JSON string per line) when it ends in
    `.jsonl`, else one prompt per non-empty line. A `UserError` names the file and line of a bad one."""
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise InputNotFound(f"--prompts {path}: no such file") from None
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if not path.endswith(".jsonl"):
            prompts.append(line)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"--prompts {path} line {number}: not JSON ({exc.msg})") from None
        prompt = record.get("prompt") if isinstance(record, dict) else record
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f'--prompts {path} line {number}: write {{"prompt": "..."}} or a JSON string')
        prompts.append(prompt)
    if not prompts:
        raise UserError(f"--prompts {path}: holds no prompts")
    return prompts


def session_folder(work_dir: str, models: dict[str, RatedModel], prompts: list[str], decoding: Decoding,
                   tokenizer: str | None) -> Path:
    """Where the session of this comparison lives (the same folder for the same inputs)."""
    if storage.is_s3(work_dir):
        raise UserError(f"--work-dir {work_dir}: rating sessions append to a local file; give a local folder")
    key = stable_hash({"models": [models[m].digest for m in MODELS], "prompts": prompts,
                       "decoding": decoding.__dict__, "tokenizer": tokenizer})[:12]
    name = f"{models['model_a'].label}-vs-{models['model_b'].label}-{key}"
    return Path(storage.absolute(work_dir)) / RATE_DIR / name


def balanced_sides(count: int, seed: int, session: str) -> list[str]:
    """Which model each prompt shows on the left: half each way (one more for model_a when odd), shuffled
    by a generator seeded from `seed` and the session, so a rater cannot learn a side."""
    sides = [MODELS[i % 2] for i in range(count)]
    random.Random(f"{seed}/{session}").shuffle(sides)
    return sides


@dataclass
class RatingSession:
    """An open session: its folder, models, prompts, answers and the left model of each prompt."""

    folder: Path
    models: dict[str, RatedModel]
    prompts: list[str]
    left: list[str]
    answers: dict[str, list[str]]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def ratings_path(self) -> Path:
        return self.folder / RATINGS_FILE

    def item(self, index: int) -> dict:
        """Prompt `index` as the page shows it: the answers under A (left) and B (right) only."""
        left = self.left[index]
        right = MODELS[1 - MODELS.index(left)]
        return {"index": index, "prompt": self.prompts[index], "A": self.answers[left][index],
                "B": self.answers[right][index]}

    def ratings(self) -> list[dict]:
        """Every rating so far, in the order given (a line cut short by a crash is left out)."""
        if not self.ratings_path.exists():
            return []
        out = []
        for line in self.ratings_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def rated(self) -> set[int]:
        return {int(r["index"]) for r in self.ratings()}

    def record(self, index: object, choice: object, note: object = "") -> dict:
        """Append the rater's pick for prompt `index` (A, B or tie as shown) mapped to the model it was,
        and return the rating; a `UserError` for a bad request, `AlreadyRated` for a second one."""
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self.prompts):
            raise UserError(f"index {index!r}: not a prompt of this session (0 to {len(self.prompts) - 1})")
        if choice not in CHOICES:
            raise UserError(f"choice {choice!r}: pick one of {', '.join(CHOICES)}")
        if not isinstance(note, str):
            raise UserError("note: must be text")
        left = self.left[index]
        right = MODELS[1 - MODELS.index(left)]
        winner = {"A": left, "B": right, "tie": "tie"}[choice]
        rating = {"index": index, "prompt": self.prompts[index], "choice": choice, "left": left, "winner": winner,
                  "note": note.strip()[:MAX_NOTE], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        # The lock file too: two `llmpipe rate` processes on one session must not both rate a prompt.
        with self._lock, open(self.ratings_path, "a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            if index in self.rated():
                raise AlreadyRated(f"prompt {index} is rated already")
            f.write(json.dumps(rating, ensure_ascii=False) + "\n")
            f.flush()
        return rating


def open_session(models: dict[str, RatedModel], prompts: list[str], decoding: Decoding, work_dir: str,
                 tokenizer: str | None = None, generate: bool = True) -> RatingSession:
    """Open (or continue) the session comparing `models` on `prompts`: the answers are generated once per
    model and cached in the session folder. `generate=False` opens an existing session only (a summary),
    with a `UserError` when there is none."""
    folder = session_folder(work_dir, models, prompts, decoding, tokenizer)
    session_path = folder / SESSION_FILE
    if session_path.exists():
        left = json.loads(session_path.read_text(encoding="utf-8"))["left"]
    elif not generate:
        raise UserError(f"no rating session for these models and prompts yet ({folder}): run `llmpipe rate` "
                        "without --summary first")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        left = balanced_sides(len(prompts), decoding.seed, folder.name)
        storage.write_text(str(session_path), json.dumps({
            "models": {m: models[m].__dict__ for m in MODELS}, "prompts": prompts, "left": left,
            "decoding": decoding.__dict__, "tokenizer": tokenizer,
        }, indent=2, ensure_ascii=False))
    answers = {}
    for setting, model in zip(("MODEL_A", "MODEL_B"), MODELS):
        path = folder / f"answers-{model}.json"
        if path.exists():
            answers[model] = json.loads(path.read_text(encoding="utf-8"))["answers"]
        elif generate:
            answers[model] = generate_answers(models[model], prompts, decoding, tokenizer, setting)
            storage.write_text(str(path), json.dumps({"model": models[model].ref, "answers": answers[model]},
                                                     indent=2, ensure_ascii=False))
        else:
            answers[model] = [""] * len(prompts)
    return RatingSession(folder, models, prompts, left, answers)
