"""The rating session without a browser: prompt files, the tokenizer a checkpoint names, the balanced
blind order, ratings mapped back to the true models, the summary, answers generated once, and the
command's errors."""

import json

import pytest

from flows.cli import main
from llm.config import ChatTemplateConfig
from llm.errors import UserError
from llm.eval.rating import AlreadyRated, RatingSession, balanced_sides, load_prompts, open_session
from llm.eval.rating_models import Decoding, chat_template, checkpoint_tokenizer, resolve_model
from llm.eval.rating_summary import summarize, summary_markdown, summary_metrics
from tests.rating_setup import tiny_checkpoints


def test_the_tokenizer_is_the_override_else_what_the_checkpoint_records():
    recorded = {"tokenizer": {"uri": "/data/tok.model", "sha256": "ab" * 32}}
    assert checkpoint_tokenizer(recorded, None) == "/data/tok.model"
    assert checkpoint_tokenizer(recorded, "/mine.model") == "/mine.model"
    assert checkpoint_tokenizer({"step": 3}, "/mine.model") == "/mine.model"
    with pytest.raises(UserError, match="MODEL_B: .*--tokenizer"):
        checkpoint_tokenizer({"step": 3}, None, "MODEL_B")  # a checkpoint from before the record existed


def test_prompt_files_jsonl_and_text_and_their_errors(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "def main("}\n\n"import os\\n"\n')
    assert load_prompts(str(jsonl)) == ["def main(", "import os\n"]
    text = tmp_path / "p.txt"
    text.write_text("first prompt\n\nsecond prompt\n")
    assert load_prompts(str(text)) == ["first prompt", "second prompt"]
    jsonl.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
    with pytest.raises(UserError, match=r"p.jsonl line 2"):
        load_prompts(str(jsonl))
    with pytest.raises(UserError, match="no such file"):
        load_prompts(str(tmp_path / "missing.jsonl"))


def test_the_blind_order_is_balanced_and_follows_the_seed():
    sides = balanced_sides(9, seed=0, session="s")
    assert sides.count("model_a") == 5 and sides.count("model_b") == 4
    assert balanced_sides(9, seed=0, session="s") == sides
    assert any(balanced_sides(9, seed=s, session="s") != sides for s in range(1, 5))


def _session(tmp_path, left):
    from llm.eval.rating_models import RatedModel

    models = {m: RatedModel(f"/ckpt/{m}", f"/ckpt/{m}", m, m) for m in ("model_a", "model_b")}
    answers = {m: [f"{m} answer {i}" for i in range(len(left))] for m in models}
    tmp_path.mkdir(parents=True, exist_ok=True)
    return RatingSession(tmp_path, models, [f"prompt {i}" for i in range(len(left))], left, answers)


def test_a_pick_maps_back_to_the_model_shown_on_that_side(tmp_path):
    session = _session(tmp_path, ["model_b", "model_a", "model_b"])
    assert session.item(0) == {"index": 0, "prompt": "prompt 0", "A": "model_b answer 0", "B": "model_a answer 0"}
    assert session.record(0, "A", " terse ")["winner"] == "model_b"
    assert session.record(1, "A")["winner"] == "model_a"
    assert session.record(2, "tie")["winner"] == "tie"
    with pytest.raises(AlreadyRated):
        session.record(0, "B")
    for index, choice in [(3, "A"), ("0", "A"), (True, "A"), (1, "left")]:
        with pytest.raises(UserError):
            session.record(index, choice)
    lines = [json.loads(x) for x in session.ratings_path.read_text().splitlines()]
    assert [(r["index"], r["winner"], r["note"]) for r in lines] == [(0, "model_b", "terse"), (1, "model_a", ""),
                                                                      (2, "tie", "")]
    summary = summarize(session)
    assert summary["ratings"] == 3 and summary["ties"] == 1
    a, b = summary["models"]["model_a"], summary["models"]["model_b"]
    assert (a["wins"], a["losses"], a["ties"]) == (1, 1, 1) and (b["wins"], b["losses"]) == (1, 1)
    assert a["win_rate"] == pytest.approx(0.5) and a["strict_win_rate"] == pytest.approx(1 / 3)
    assert a["bt_score"] == pytest.approx(0, abs=1e-9) and a["bt_ci_low"] < 0 < a["bt_ci_high"]
    metrics = summary_metrics(summary)
    assert metrics["model_b_wins"] == 1 and metrics["ratings"] == 3
    assert "| 1 | 1 | 1 |" in summary_markdown(summary)
    assert "terse" not in json.dumps(summary)  # notes stay in the ratings file


def test_a_one_sided_session_scores_the_winner_higher(tmp_path):
    session = _session(tmp_path, ["model_a", "model_b", "model_a", "model_b"])
    for index, choice in enumerate(["B", "A", "B", "A"]):  # always the answer of model_b
        session.record(index, choice)
    summary = summarize(session)
    assert summary["models"]["model_b"]["wins"] == 4
    assert summary["models"]["model_b"]["bt_score"] > 0 > summary["models"]["model_a"]["bt_score"]
    assert summary["model_a_preferred_probability"] == pytest.approx(0.5 / 5)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory.mktemp("rate-models"))


def test_answers_are_generated_once_and_reused(checkpoints, tmp_path, monkeypatch):
    models = {m: resolve_model(checkpoints[k], m.upper(), "", str(tmp_path)) for m, k in
              [("model_a", "a"), ("model_b", "chat")]}
    decoding = Decoding(max_new_tokens=6, temperature=0.8, top_k=20, seed=0)
    session = open_session(models, ["def ", "import "], decoding, str(tmp_path))
    assert session.answers["model_a"] != session.answers["model_b"]
    assert session.folder.parent == tmp_path / "rate" and "-vs-" in session.folder.name
    stored = json.loads((session.folder / "answers-model_b.json").read_text())
    assert stored == {"model": checkpoints["chat"], "answers": session.answers["model_b"]}

    import llm.eval.rating as rating

    with monkeypatch.context() as patch:
        patch.setattr(rating, "generate_answers", lambda *a, **k: pytest.fail("generated again"))
        again = open_session(models, ["def ", "import "], decoding, str(tmp_path))
    assert again.folder == session.folder and again.answers == session.answers and again.left == session.left
    # Another seed samples other answers: another session.
    other = open_session(models, ["def ", "import "], Decoding(6, 0.8, 20, seed=1), str(tmp_path))
    assert other.folder != session.folder


def test_a_fine_tune_answers_through_its_chat_template(checkpoints):
    from llm.train.checkpoint import read_state

    assert chat_template(read_state(checkpoints["chat"])) == ChatTemplateConfig()
    assert chat_template(read_state(checkpoints["a"])) is None


def test_the_command_names_the_model_it_cannot_read(tmp_path, capsys):
    status = main(["rate", str(tmp_path / "nowhere"), str(tmp_path), "--work-dir", str(tmp_path / "w")])
    assert status == 2
    assert "MODEL_A" in capsys.readouterr().err
    assert main(["rate", "models:/x/y/z", str(tmp_path), "--work-dir", str(tmp_path / "w")]) == 2
    assert "MODEL_A 'models:/x/y/z': write a registered model as" in capsys.readouterr().err
    assert not (tmp_path / "w" / "mlflow").exists()  # a mistyped model makes no MLflow store
