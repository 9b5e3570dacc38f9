"""Scoring: log-likelihoods equal a direct forward pass, acc_norm divides by characters, a model trained
on the questions beats chance, and `llmpipe eval-tasks` writes, prints and logs its table."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flows.cli import main
from llm.eval.task_files import ChoiceExample, read_task
from llm.eval.tasks import checkpoint_tokenizer, load_scorer, run_tasks, score_choices
from llm.errors import UserError
from llm.train.checkpoint import tokenizer_record


@pytest.fixture(scope="module")
def scorer(quiz_model):
    return load_scorer(quiz_model.checkpoint, quiz_model.tokenizer, "cpu", batch_size=5)[0]


def test_continuation_log_likelihood_is_a_forward_pass_over_bos_context_and_continuation(scorer, quiz_model):
    tok = scorer.tokenizer
    context, continuation = "Question: France (given the European, give the capital)\nAnswer:", " Paris"
    ids = [tok.bos_id, *tok.encode(context + continuation)]
    n = len(tok.encode(context + continuation)) - len(tok.encode(context))
    with torch.no_grad():
        logits, _ = scorer.model(torch.tensor([ids[:-1]]))
    logprobs = F.log_softmax(logits[0].double(), dim=-1)
    expected = sum(float(logprobs[len(ids) - 1 - n + i, ids[len(ids) - n + i]]) for i in range(n))
    greedy = all(int(logprobs[len(ids) - 1 - n + i].argmax()) == ids[len(ids) - n + i] for i in range(n))
    # batched with other pairs of other lengths (right padding must not change a row's score)
    pairs = [("Question: Spain", " Madrid and more words here"), (context, continuation), ("", " Paris")]
    scores = scorer.score_pairs(pairs)
    assert scores[1].loglikelihood == pytest.approx(expected, abs=1e-4)
    assert scores[1].tokens == n and scores[1].is_greedy == greedy
    assert scores[1].loglikelihood == pytest.approx(scorer.score_pairs([pairs[1]])[0].loglikelihood, abs=1e-5)
    # a context's trailing space moves to the continuation: the same text scores the same
    assert scorer.score_pairs([(context + " ", "Paris")])[0].loglikelihood == pytest.approx(expected, abs=1e-4)


def test_acc_norm_divides_by_the_choices_length_in_characters(scorer, quiz_model):
    examples = read_task(f"{quiz_model.tasks_dir}/capitals.jsonl", limit=60).examples
    # The questions where dividing by the choice's length changes the pick, with the gold set to the
    # choice acc_norm picks: acc is 0 on every one and acc_norm 1.
    scores = iter(scorer.score_pairs([(ex.context, " " + c) for ex in examples for c in ex.choices]))
    flipped = []
    for ex in examples:
        lls = np.array([next(scores).loglikelihood for _ in ex.choices])
        by_ll, by_norm = int(np.argmax(lls)), int(np.argmax(lls / [len(c) for c in ex.choices]))
        if by_ll != by_norm:
            flipped.append(ChoiceExample(ex.context, ex.choices, by_norm))
    assert len(flipped) >= 5, "too few questions where the length normalisation changes the choice"
    assert score_choices(scorer, flipped) == {"acc": 0.0, "acc_norm": 1.0, "chance": 0.25}


def test_a_model_trained_on_the_questions_beats_chance_and_the_cli_reports_it(quiz_model, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    work = tmp_path / "work"
    code = main(["eval-tasks", quiz_model.checkpoint, quiz_model.tasks_dir, "--tokenizer", quiz_model.tokenizer,
                 "--work-dir", str(work)])
    assert code == 0
    printed = capsys.readouterr().out
    results = json.loads((work / "eval_tasks" / "results.json").read_text())
    capitals = results["results"][0]
    assert (capitals["task"], capitals["kind"], capitals["n"]) == ("capitals", "multiple_choice", 110)
    assert capitals["chance"] == 0.25 and capitals["acc"] > 0.4
    assert f"{capitals['acc']:.4f}" in printed and "capitals" in printed
    assert (work / "eval_tasks" / "results.txt").read_text().strip() in printed
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow' / 'mlflow.db'}")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.metrics["capitals.acc"] == pytest.approx(capitals["acc"])
    assert run.data.metrics["capitals.acc_norm"] == pytest.approx(capitals["acc_norm"])
    assert run.info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert logged == {"results.json", "results.txt"}


def test_cloze_accuracy_is_greedy_match_and_target_perplexity_is_lambadas(scorer, quiz_model, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    records = [{"context": t.rsplit(" ", 1)[0], "target": t.rsplit(" ", 1)[1]} for t in quiz_model.texts[:30]]
    (tasks / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    [result] = run_tasks(quiz_model.checkpoint, str(tasks), str(tmp_path / "out"), tokenizer=quiz_model.tokenizer,
                         limit=20)
    scores = scorer.score_pairs([(r["context"], " " + r["target"]) for r in records[:20]])
    assert result.n == 20 and result.kind == "cloze"
    assert result.acc == pytest.approx(np.mean([s.is_greedy for s in scores]))
    assert result.target_ppl == pytest.approx(math.exp(-np.mean([s.loglikelihood for s in scores])))


def test_the_tokenizer_comes_from_the_flag_else_the_checkpoint_state(quiz_model, tmp_path, capsys):
    assert checkpoint_tokenizer({"tokenizer": {"uri": "/t/spm.model", "sha256": "ab"}}, None) == "/t/spm.model"
    assert checkpoint_tokenizer({"tokenizer": {"uri": "/t/spm.model"}}, "/other.model") == "/other.model"
    with pytest.raises(UserError, match="records no tokenizer.*--tokenizer"):
        checkpoint_tokenizer({}, None)
    # an older checkpoint without the record: one clear line, exit status 2
    code = main(["eval-tasks", quiz_model.checkpoint, quiz_model.tasks_dir, "--no-tracking",
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "records no tokenizer" in capsys.readouterr().err
    # a checkpoint that records its tokenizer needs no flag
    ckpt = tmp_path / "ckpt"
    shutil.copytree(quiz_model.checkpoint, ckpt)
    state = json.loads((ckpt / "state.json").read_text())
    state["tokenizer"] = tokenizer_record(quiz_model.tokenizer)
    (ckpt / "state.json").write_text(json.dumps(state))
    assert main(["eval-tasks", str(ckpt), quiz_model.tasks_dir, "--no-tracking", "--limit", "5",
                 "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["tokenizer"] == quiz_model.tokenizer
    # ... and refuses a recorded tokenizer whose file changed since (other ids), naming the flag
    state["tokenizer"]["sha256"] = "0" * 64
    (ckpt / "state.json").write_text(json.dumps(state))
    capsys.readouterr()
    assert main(["eval-tasks", str(ckpt), quiz_model.tasks_dir, "--no-tracking", "--limit", "5",
                 "--out", str(tmp_path / "out2")]) == 2
    assert "changed since" in capsys.readouterr().err
