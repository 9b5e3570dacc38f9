"""The `llmpipe` model in the real lm-evaluation-harness: from the command line on a local multiple-choice
task it gives the accuracy the project's own evaluator gives; its rolling log-likelihood is the
project's perplexity arithmetic; greedy generation stops at a stop string."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm.eval.task_files import read_task
from llm.eval.tasks import run_tasks
from tests.unit.eval.test_task_files import HELLASWAG, WIKIHOW

REPO = Path(__file__).resolve().parents[3]

TASK_YAML = """\
task: capitals_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""

# lm-eval's own HellaSwag task (its text cleaning included) on local records
HELLASWAG_YAML = """\
include: {lm_eval_tasks}/hellaswag/hellaswag.yaml
task: hellaswag_local
tag: []
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    validation: {data}
training_split: null
"""


@pytest.fixture(scope="module")
def lm(quiz_model):
    from llm.eval.lm_eval_model import LlmpipeLM

    return LlmpipeLM.create_from_arg_string(f"checkpoint={quiz_model.checkpoint},tokenizer={quiz_model.tokenizer}",
                                            {"batch_size": 8, "device": "cpu"})


@pytest.mark.slow  # a second process loading lm-eval and torch: ~20 s on 2 cores
def test_lm_eval_command_line_scores_local_tasks_as_the_projects_evaluator_does(quiz_model, tmp_path):
    import lm_eval.tasks

    include = tmp_path / "lm_eval_tasks"
    include.mkdir()
    (include / "capitals_mc.yaml").write_text(TASK_YAML.format(data=Path(quiz_model.tasks_dir) / "capitals.jsonl"))
    hellaswag = tmp_path / "ours" / "hellaswag.jsonl"
    hellaswag.parent.mkdir()
    records = [HELLASWAG, WIKIHOW, dict(HELLASWAG, label=1, activity_label="Skiing"), dict(WIKIHOW, label=1)]
    hellaswag.write_text("".join(json.dumps(r) + "\n" for r in records))
    (include / "hellaswag_local.yaml").write_text(HELLASWAG_YAML.format(
        lm_eval_tasks=Path(lm_eval.tasks.__file__).parent, data=hellaswag))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "lm-eval", "run", "--model", "llmpipe",
         "--model_args", f"checkpoint={quiz_model.checkpoint},tokenizer={quiz_model.tokenizer}",
         "--tasks", "capitals_mc", "hellaswag_local", "--include_path", str(include), "--batch_size", "16",
         "--device", "cpu", "--output_path", str(tmp_path / "lm_eval_out"), "--log_samples", "--limit", "60"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    [results_file] = (tmp_path / "lm_eval_out").rglob("results_*.json")
    theirs = json.loads(results_file.read_text())["results"]
    [ours] = run_tasks(quiz_model.checkpoint, quiz_model.tasks_dir, str(tmp_path / "out"),
                       tokenizer=quiz_model.tokenizer, limit=60)
    assert theirs["capitals_mc"]["acc,none"] == pytest.approx(ours.acc, abs=1e-9)
    assert theirs["capitals_mc"]["acc_norm,none"] == pytest.approx(ours.acc_norm, abs=1e-9)
    assert ours.acc != ours.acc_norm  # the two measures are told apart, and both agree
    # HellaSwag: lm-eval asks for exactly the (context, continuation) pairs our reading of the file makes
    [samples_file] = (tmp_path / "lm_eval_out").rglob("samples_hellaswag_local_*.jsonl")
    samples = sorted(map(json.loads, samples_file.read_text().splitlines()), key=lambda d: d["doc_id"])
    task = read_task(hellaswag)
    for sample, ex in zip(samples, task.examples, strict=True):
        by_choice = sorted(sample["arguments"].items(), key=lambda item: int(item[0].rsplit("_", 1)[1]))
        asked = [(args["arg_0"], args["arg_1"]) for _, args in by_choice]
        assert asked == [(ex.context, " " + choice) for choice in ex.choices]
    [ours] = run_tasks(quiz_model.checkpoint, str(hellaswag.parent), str(tmp_path / "out"),
                       tokenizer=quiz_model.tokenizer)
    assert (theirs["hellaswag_local"]["acc,none"], theirs["hellaswag_local"]["acc_norm,none"]) == \
        pytest.approx((ours.acc, ours.acc_norm), abs=1e-9)


def test_rolling_log_likelihood_is_the_projects_perplexity_on_the_same_text(lm, quiz_model, tmp_path):
    import torch
    from lm_eval.api.instance import Instance

    from llm.train.data import TokenDataset, write_token_dataset
    from llm.train.validation import validation_loss

    tok, window = lm.scorer.tokenizer, lm.scorer.context_length
    text = " ".join(quiz_model.texts[:12])
    ids = tok.encode(text)[: 3 * window]  # whole windows: the validation loss scores whole windows only
    text = tok.decode(ids)
    assert tok.encode(text) == ids
    write_token_dataset(str(tmp_path / "one-doc"), {"val": [[tok.bos_id, *ids]]}, vocab_size=tok.vocab_size)
    loss, scored = validation_loss(lm.scorer.model, TokenDataset(str(tmp_path / "one-doc")).split("val"), window,
                                   4, 4, torch.device("cpu"))
    [rolling] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert scored == len(ids) == 3 * window
    assert -rolling / len(ids) == pytest.approx(loss, abs=1e-5)
    assert math.exp(-rolling / len(ids)) == pytest.approx(math.exp(loss), rel=1e-5)
    # a text that is not whole windows: every token predicted once, the last ones after a full window
    short = ids[: window + 5]
    [partial] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (tok.decode(short),), 0)])
    assert tok.encode(tok.decode(short)) == short
    sequence = torch.tensor([[tok.bos_id, *short]])
    with torch.no_grad():
        first = torch.log_softmax(lm.scorer.model(sequence[:, :window])[0][0].double(), -1)
        last = torch.log_softmax(lm.scorer.model(sequence[:, 5:window + 5])[0][0].double(), -1)
    expected = sum(float(first[i, short[i]]) for i in range(window)) + \
        sum(float(last[window - 5 + i, short[window + i]]) for i in range(5))
    assert partial == pytest.approx(expected, abs=1e-4)


def test_generate_until_stops_at_the_stop_string(lm, quiz_model):
    from lm_eval.api.instance import Instance

    prompt = quiz_model.texts[0].rsplit("Answer:", 1)[0] + "Answer:"
    [free] = lm.generate_until([Instance("generate_until", {}, (prompt, {"until": [], "max_gen_toks": 12}), 0)])
    assert len(free) > 3
    stop = free[2:4]  # a string the free continuation contains, after its start
    [stopped] = lm.generate_until([Instance("generate_until", {}, (prompt, {"until": [stop], "max_gen_toks": 12}), 0)])
    assert stopped == free[: free.index(stop)] and stop not in stopped
    # loglikelihood answers through the same scorer eval-tasks uses
    [(ll, greedy)] = lm.loglikelihood([Instance("loglikelihood", {}, (prompt, " " + free.split()[0]), 0)])
    assert ll == pytest.approx(lm.scorer.score_pairs([(prompt, " " + free.split()[0])])[0].loglikelihood)
