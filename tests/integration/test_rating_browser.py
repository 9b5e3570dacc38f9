"""`llmpipe rate` on two real (tiny) models, rated in headless chromium: keyboard shortcuts, a click, a
note, a skip and a reload, on a free loopback port, then Ctrl-C. The ratings file and the session's MLflow
run must count each pick for the model whose answer was shown, not for the side it was shown on."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from flows.cli import main
from llm.config import EvalConfig, TrackingConfig
from llm.eval.rating import open_session
from llm.eval.rating_models import Decoding, resolve_model
from llm.eval.rating_summary import SESSION_TAG
from llm.tracking import Tracker
from tests.conftest import REPO
from tests.integration.conftest import free_port, stop
from tests.rating_setup import tiny_checkpoints

pytestmark = [pytest.mark.integration]

PROMPTS = ["def add(", "<b>bold</b><script>window.pwned = 1</script>", "import os\n", "The quick", "print("]


def _session(tmp_path):
    """The session the command will open (its answers generated here, so the command reuses them), with a
    seed whose first three prompts show both models on the left: a pick counted by side would then differ
    from one counted by model."""
    folders = tiny_checkpoints(tmp_path)
    work = str(tmp_path / "work")
    models = {"model_a": resolve_model(folders["a"], "MODEL_A", "", work),
              "model_b": resolve_model(folders["b"], "MODEL_B", "", work)}
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    for seed in range(20):
        session = open_session(models, PROMPTS, Decoding(8, EvalConfig().temperature, EvalConfig().top_k, seed), work)
        if len(set(session.left[:3])) == 2:
            break
    assert all(session.answers["model_a"][i] != session.answers["model_b"][i] for i in range(3))
    args = [folders["a"], folders["b"], "--work-dir", work, "--prompts", str(tmp_path / "prompts.jsonl"),
            "--max-new-tokens", "8", "--seed", str(seed)]
    return session, work, args


def _start_command(args: list[str], port: int, tmp_path) -> tuple[subprocess.Popen, str]:
    """`llmpipe rate ARGS --port PORT` in its own process, and the URL it prints."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "rate.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "rate", *args, "--port", str(port)], cwd=REPO,
                            env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"open (http://127\.0\.0\.1:\d+/)", (tmp_path / "rate.log").read_text())
        if found:
            return proc, found.group(1)
        assert proc.poll() is None, (tmp_path / "rate.log").read_text()
        time.sleep(0.3)
    stop(proc)
    raise AssertionError(f"no URL printed in 120 s: {(tmp_path / 'rate.log').read_text()}")


def _wait_progress(driver, text: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.find_element("id", "progress").text == text,
                                    f"progress never read {text!r}")


def _shown(driver) -> tuple[int, str]:
    return int(driver.find_element("tag name", "body").get_attribute("data-index")), \
        driver.find_element("id", "answer-a").text


def test_rating_in_the_browser_counts_the_true_models(tmp_path, browser, capsys):
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    session, work, args = _session(tmp_path)
    port = free_port()
    proc, url = _start_command(args, port, tmp_path)
    try:
        assert url == f"http://127.0.0.1:{port}/"
        browser.get(url)
        _wait_progress(browser, f"0 rated of {len(PROMPTS)}")
        # Model text and prompts are shown as text, never run as markup.
        index, _ = _shown(browser)
        assert index == 0
        picks = {}
        keys = ActionChains(browser)
        picks[0] = ("A", _shown(browser)[1])
        keys.send_keys("a").perform()
        _wait_progress(browser, f"1 rated of {len(PROMPTS)}")
        assert browser.find_element("id", "prompt").text == PROMPTS[1]
        assert browser.execute_script("return window.pwned === undefined && !document.querySelector('#prompt b')")

        picks[1] = ("B", _shown(browser)[1])
        ActionChains(browser).send_keys(Keys.ENTER).send_keys("B is less repetitive").send_keys(Keys.ENTER) \
            .send_keys("b").perform()
        _wait_progress(browser, f"2 rated of {len(PROMPTS)}")

        picks[2] = ("tie", _shown(browser)[1])
        browser.find_element("id", "pick-tie").click()
        _wait_progress(browser, f"3 rated of {len(PROMPTS)}")
        assert _shown(browser)[0] == 3
        ActionChains(browser).send_keys("s").perform()  # skip: prompt 4 now, 3 comes back later
        assert _shown(browser)[0] == 4

        browser.refresh()  # rated prompts stay rated; the page starts at the first unrated one
        _wait_progress(browser, f"3 rated of {len(PROMPTS)}")
        assert _shown(browser)[0] == 3

        # Which model the rater picked follows from the text they saw under A.
        expected = {}
        for i, (choice, text_a) in picks.items():
            shown_a = next(m for m in ("model_a", "model_b") if session.answers[m][i].strip() == text_a.strip())
            other = "model_b" if shown_a == "model_a" else "model_a"
            expected[i] = {"A": shown_a, "B": other, "tie": "tie"}[choice]
        lines = [json.loads(x) for x in session.ratings_path.read_text().splitlines()]
        assert {r["index"]: r["winner"] for r in lines} == expected
        assert [r["note"] for r in lines] == ["", "B is less repetitive", ""]

        tracker = Tracker(TrackingConfig(), work)  # the command's default: the store in the work directory
        client = MlflowClient(tracking_uri=tracker.uri)
        runs = client.search_runs([tracker.experiment_id()], f"tags.`{SESSION_TAG}` = '{session.name}'")
        assert len(runs) == 1
        metrics = runs[0].data.metrics
        winners = list(expected.values())
        assert metrics["ratings"] == 3 and metrics["ties"] == 1
        assert metrics["model_a_wins"] == winners.count("model_a")
        assert metrics["model_b_wins"] == winners.count("model_b")
        assert metrics["model_a_win_rate"] == pytest.approx((winners.count("model_a") + 0.5) / 3)
        assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "ratings")] == [1, 2, 3]
        local = client.download_artifacts(runs[0].info.run_id, "rating/summary.json", str(tmp_path))
        with open(local, encoding="utf-8") as f:
            summary = json.load(f)
        assert summary["models"]["model_a"]["wins"] == winners.count("model_a")

        # Another host name (a rebound DNS name) gets nothing; the server answers only at its own address.
        request = urllib.request.Request(f"{url}api/items", headers={"Host": f"evil.example:{port}"})
        with pytest.raises(urllib.error.HTTPError, match="403"):
            urllib.request.urlopen(request, timeout=10)

        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 0, (tmp_path / "rate.log").read_text()
    finally:
        stop(proc)
    assert f"stopped: 3 rated of {len(PROMPTS)}" in (tmp_path / "rate.log").read_text()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the server still listens after Ctrl-C"
    assert client.get_run(runs[0].info.run_id).info.status == "FINISHED"

    # The report of the session so far, logged to the same run.
    assert main(["rate", *args, "--summary"]) == 0
    out = capsys.readouterr().out
    assert f"3 rated of {len(PROMPTS)} prompts, 1 ties." in out
    a_wins = winners.count("model_a")
    assert f"| model_a: `{args[0]}` | {a_wins} | {winners.count('model_b')} | 1 |" in out
    assert len(client.search_runs([tracker.experiment_id()], f"tags.`{SESSION_TAG}` = '{session.name}'")) == 1
    assert main(["rate", *args[:-1], "99", "--summary"]) == 2  # another seed: a session never opened
    assert "no rating session" in capsys.readouterr().err


def test_a_registered_model_is_fetched_once_and_needs_a_tokenizer_named(tmp_path, monkeypatch):
    from llm.errors import UserError
    from llm.eval.rating_models import RatedModel, generate_answers
    from llm.tracking import RunTarget
    from llm.train.checkpoint import load_model_state
    from llm.train.publish import register_model

    # MLflow's own setting: stop inferring the logged model's pip requirements after 1 s (its default,
    # 120 s, spent 20 s here importing the model in a subprocess); it falls back to its default list.
    monkeypatch.setenv("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "1")
    folders = tiny_checkpoints(tmp_path)
    tracker = Tracker(TrackingConfig(experiment="rating"), str(tmp_path / "work"))
    run = tracker.start_run("pretrain")
    register_model(RunTarget(tracker.uri, run.run_id), folders["b"], "rate-tiny", "current")
    fetched = resolve_model("models:/rate-tiny@current", "MODEL_B", tracker.uri, str(tmp_path / "models"))
    assert fetched.checkpoint == str(tmp_path / "models" / "rate-tiny-v1")
    written = (tmp_path / "models" / "rate-tiny-v1" / "model.pt").stat().st_mtime_ns
    assert resolve_model("models:/rate-tiny/1", "MODEL_B", tracker.uri, str(tmp_path / "models")) == \
        RatedModel("models:/rate-tiny/1", fetched.checkpoint, fetched.digest, fetched.label)
    assert (tmp_path / "models" / "rate-tiny-v1" / "model.pt").stat().st_mtime_ns == written  # not fetched again
    assert (fetched.label, fetched.digest) == ("rate-tiny-v1", "models:/rate-tiny/1")
    weights, original = load_model_state(fetched.checkpoint), load_model_state(folders["b"])
    assert all((weights[k] == original[k]).all() for k in original)
    # The registry does not keep the tokenizer: the user names it, and is told so when they do not.
    decoding = Decoding(4, 0.8, 20, 0)
    with pytest.raises(UserError, match="MODEL_B: .*--tokenizer"):
        generate_answers(fetched, ["def "], decoding, None, "MODEL_B")
    tokenizer = str(tmp_path / "tok.model")
    plain = resolve_model(folders["b"], "MODEL_A", "", str(tmp_path / "models"))
    assert generate_answers(fetched, ["def "], decoding, tokenizer, "MODEL_B") == \
        generate_answers(plain, ["def "], decoding, None, "MODEL_A")
    with pytest.raises(UserError, match="MODEL_B 'models:/rate-tiny@nightly': not in the model registry"):
        resolve_model("models:/rate-tiny@nightly", "MODEL_B", tracker.uri, str(tmp_path / "models"))
