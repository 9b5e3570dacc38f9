"""The deployments as a user runs them: a real Prefect server and process worker on 127.0.0.1, `prefect
deploy --all` from prefect.yaml, the data refresh triggered with a config file path, and what the run
shows through the Prefect API (artifacts, logs, the stage chain, the persisted result) and the MLflow
server (the parent run tagged with the flow run). A second trigger while one runs is held by the
deployment's concurrency limit. The worker starts in another folder with no LLMPIPE_HOME: the pull step
finds the project itself."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import free_port, stop, wait_for_port
from tests.integration.data_runs import _wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
DATA_STAGES = ["ingest", "exact_dedup", "minhash_dedup", "shard", "tokenizer", "tokenize"]


def tiny_config(path: Path, work: Path, mlflow_uri: str) -> Path:
    path.write_text(f"""\
name: deployed-tiny
work_dir: {work}
data:
  sources:
    - {{kind: code, name: code, max_files: 8, files_per_shard: 2}}
  shard: {{target_bytes: 8000}}
tokenizer: {{vocab_size: 512, sample_bytes: 200000}}
tracking: {{uri: "{mlflow_uri}", experiment: deployed}}
ray: {{num_cpus: 1, object_store_memory: 100000000}}
""")
    return path


def prefect_env(home: Path, api: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LLMPIPE_HOME", "MLFLOW_"))}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               RAY_USAGE_STATS_ENABLED="0")
    if api:
        env["PREFECT_API_URL"] = api
    return env


class Api:
    """The Prefect REST API, as the UI and `prefect` reach it."""

    def __init__(self, url: str):
        self.url = url

    def get(self, path: str):
        return self._call("get", path)

    def post(self, path: str, body: dict):
        return self._call("post", path, json=body)

    def _call(self, method: str, path: str, **kwargs):
        # A busy server (its SQLite database locked by a writer on a loaded machine) answers 503: the
        # Prefect client retries those too.
        for attempt in range(6):
            answer = requests.request(method, f"{self.url}{path}", timeout=60, **kwargs)
            if answer.status_code != 503:
                break
            time.sleep(2 * (attempt + 1))
        answer.raise_for_status()
        return answer.json()

    def deployment(self, name: str) -> dict:
        found = [d for d in self.post("/deployments/filter", {}) if d["name"] == name]
        assert found, f"no deployment {name}"
        return found[0]

    def flow_run(self, run_id: str) -> dict:
        return self.get(f"/flow_runs/{run_id}")


def wait_state(api: Api, run_id: str, final: set[str], timeout: float, seen: dict | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = api.flow_run(run_id)
        if seen is not None and run["state"]:
            seen.setdefault(run["state"]["name"], time.monotonic())
        if run["state"] and run["state"]["type"] in final:
            return run
        assert time.monotonic() < deadline, f"flow run {run_id} still {run['state']} after {timeout} s"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A Prefect server (with its UI and services), an MLflow server, the `llmpipe` process pool with the
    deployments from prefect.yaml, and a worker on it; yields (Api, UI URL, MLflow URL, tmp folder)."""
    tmp_path = tmp_path_factory.mktemp("served")
    home = tmp_path / "prefect"
    home.mkdir()
    procs = []
    logs = []

    def start(cmd, env, cwd, name):
        log = open(tmp_path / f"{name}.log", "wb")
        logs.append(log)
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    try:
        mlflow_port, port = free_port(), free_port()
        url = f"http://127.0.0.1:{port}/api"
        mlflow = start([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port",
                        str(mlflow_port), "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                        "--artifacts-destination", str(tmp_path / "artifacts")], prefect_env(home), tmp_path, "mlflow")
        # The UI the server hands the browser calls the API at PREFECT_API_URL (else the default port).
        server = start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                       prefect_env(home, url), tmp_path, "server")
        wait_for_port(port, server, timeout=180)
        _wait_healthy(url, server, timeout=120)
        wait_for_port(mlflow_port, mlflow, timeout=120)
        env = prefect_env(home, url)
        for cmd in ([PREFECT, "work-pool", "create", "llmpipe", "--type", "process", "--overwrite"],
                    [PREFECT, "--no-prompt", "deploy", "--all"]):
            done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
            assert done.returncode == 0, f"{cmd[1:3]}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        # Started elsewhere, with no hint of where the project is: the pull step must find it.
        worker_dir = tmp_path / "worker"
        worker_dir.mkdir()
        start([PREFECT, "worker", "start", "--pool", "llmpipe"], env, worker_dir, "worker")
        yield Api(url), f"http://127.0.0.1:{port}", f"http://127.0.0.1:{mlflow_port}", tmp_path
    finally:
        for proc in reversed(procs):
            stop(proc)
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def two_refreshes(served):
    """The data refresh deployment triggered twice at once with a config file path; both waited for.
    Returns the two flow runs in the order they ran, each with its state history under "history"."""
    api, _, mlflow_uri, tmp_path = served
    refresh = api.deployment("nightly-data-refresh")
    config = tiny_config(tmp_path / "tiny.yaml", tmp_path / "work", mlflow_uri)
    params = {"config_path": str(config)}
    ids = [api.post(f"/deployments/{refresh['id']}/create_flow_run", {"parameters": params})["id"] for _ in range(2)]
    runs = []
    for run_id in ids:
        done = wait_state(api, run_id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, timeout=600)
        assert done["state"]["type"] == "COMPLETED", _why(api, run_id, tmp_path)
        done["history"] = [st["name"] for st in sorted(api.get(f"/flow_run_states/?flow_run_id={run_id}"),
                                                        key=lambda st: st["timestamp"])]
        runs.append(done)
    return sorted(runs, key=lambda r: r["start_time"])


def test_deployments_from_prefect_yaml(served):
    api = served[0]
    names = {d["name"] for d in api.post("/deployments/filter", {})}
    assert {"pipeline", "nightly-data-refresh", "pretrain", "evaluate", "finetune"} <= names
    refresh = api.deployment("nightly-data-refresh")
    schedules = refresh["schedules"]
    assert schedules and schedules[0]["schedule"]["cron"] == "0 2 * * *"
    assert schedules[0]["schedule"]["timezone"] == "UTC"
    assert refresh["concurrency_limit"] == 1 or (refresh.get("global_concurrency_limit") or {}).get("limit") == 1
    assert refresh["pull_steps"] == [{"flows.worker_steps.use_project_root": {}}]  # no path of this machine
    for name in names & {"pipeline", "nightly-data-refresh", "pretrain", "evaluate", "finetune"}:
        props = api.deployment(name)["parameter_openapi_schema"]["properties"]
        assert {"config", "config_path", "overrides"} <= set(props), (name, sorted(props))
        assert "project root" in props["config_path"]["description"]


def test_a_second_refresh_waits_for_the_first(two_refreshes):
    earlier, later = two_refreshes
    assert later["start_time"] >= earlier["end_time"], "the two refreshes overlapped"
    # The later one was held by the deployment's concurrency limit, not merely picked up late.
    assert "AwaitingConcurrencySlot" in later["history"], later["history"]
    assert later["history"][-1] == "Completed"


def test_the_run_shows_its_work(served, two_refreshes):
    api, _, mlflow_uri, _ = served
    run = two_refreshes[0]  # the one that ran first: it made every stage's version
    run_id = run["id"]

    # The stage chain in the run graph: each stage waits for the one before.
    task_runs = api.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    by_name = {t["name"].rsplit("-", 1)[0]: t for t in task_runs}  # task runs are named NAME-xyz
    assert set(DATA_STAGES) <= set(by_name), sorted(by_name)
    for before, after in zip(DATA_STAGES, DATA_STAGES[1:]):
        upstream = {i["id"] for i in by_name[after]["task_inputs"].get("wait_for", [])}
        assert upstream == {by_name[before]["id"]}, (after, by_name[after]["task_inputs"])
    assert not by_name["ingest"]["task_inputs"].get("wait_for")

    # Artifacts: a summary and an MLflow link per stage, and the run's summary.
    artifacts = api.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    keys = {a["key"]: a for a in artifacts}
    for name in DATA_STAGES:
        key = name.replace("_", "-")
        assert keys[f"{key}-summary"]["type"] == "markdown"
        # Prefect keeps a link artifact as markdown: [text](url)
        assert keys[f"{key}-mlflow"]["data"].startswith(f"[MLflow run of {name}]({mlflow_uri}/#/experiments/")
    assert "| read | kept | dropped | quarantined |" in keys["ingest-summary"]["data"]
    assert "llmpipe run summary" in keys["pipeline-run-summary"]["data"]

    # Logs: the stages' summary lines in the flow run's logs (what Ray workers print: test_prefect_logs.py).
    logs = api.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
    messages = [entry["message"] for entry in logs]
    for name in DATA_STAGES:
        assert any(m.startswith(f"{name}: ") for m in messages), (name, messages[:40])

    # The result is persisted (a reference to stored data, not only in memory).
    assert run["state"]["data"], run["state"]

    # MLflow: the parent run carries the flow run's id, and the stage runs hang under it.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("deployed")
    parents = client.search_runs([experiment.experiment_id], f"tags.`prefect.flow_run_id` = '{run_id}'")
    assert len(parents) == 1
    assert parents[0].data.tags["prefect.flow_run_url"].endswith(f"/runs/flow-run/{run_id}")
    children = client.search_runs([experiment.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert sorted(r.data.tags["llmpipe.stage"] for r in children) == sorted(DATA_STAGES)
    ingest_run = next(r.info.run_id for r in children if r.data.tags["llmpipe.stage"] == "ingest")
    assert keys["ingest-mlflow"]["data"].endswith(f"/runs/{ingest_run})")
    assert keys["pipeline-mlflow-run"]["data"].endswith(f"/runs/{parents[0].info.run_id})")


def page_text_with(driver, url: str, wanted: list[str], timeout: float = 90) -> str:
    """Open `url` and wait until the rendered page's text holds every string of `wanted`."""
    driver.get(url)
    return wait_for_text(driver, wanted, timeout, url)


def wait_for_text(driver, wanted: list[str], timeout: float, where: str) -> str:
    """The rendered page's text, once it holds every string of `wanted` (the UI renders after loading)."""
    deadline = time.monotonic() + timeout
    while True:
        text = driver.find_element("tag name", "body").text
        if all(w in text for w in wanted):
            return text
        assert time.monotonic() < deadline, f"{where}: missing {[w for w in wanted if w not in text]} in\n{text[:3000]}"
        time.sleep(1)


def test_the_ui_shows_the_config_form_and_the_run(served, two_refreshes, browser):
    api, ui, _, _ = served
    refresh = api.deployment("nightly-data-refresh")
    # The run form: the parameters with their descriptions, the config path filled in, no secret value.
    text = page_text_with(browser, f"{ui}/deployments/deployment/{refresh['id']}/run",
                          ["config_path", "A YAML config file to use instead of the inline config"])
    source = browser.page_source
    assert "configs/demo.yaml" in source or "configs/demo.yaml" in text
    for secret in ("AWS_SECRET_ACCESS_KEY", "pseudonym_key\": \"", "SecretStr('"):
        assert secret not in source

    # The flow run page: its task runs are the stages, and its artifacts are there.
    run_id = two_refreshes[0]["id"]
    page_text_with(browser, f"{ui}/runs/flow-run/{run_id}", ["6 Task runs", "nightly-data-refresh"])
    text = open_tab(browser, "Task Runs", [f"{name}-" for name in DATA_STAGES])
    text = open_tab(browser, "Artifacts", ["ingest-summary", "pipeline-run-summary"])
    assert "tokenize-mlflow" in text
    browser.save_screenshot(str(served[3] / "flow-run-artifacts.png"))


def open_tab(driver, label: str, wanted: list[str], timeout: float = 60) -> str:
    """Click the run page's tab called `label` and wait for every string of `wanted` in the page."""
    # The innermost element reading exactly `label`: a tab button, or an option of the narrow layout's select.
    clicked = driver.execute_script("""
        const label = arguments[0];
        const hits = [...document.querySelectorAll('*')].filter(e => (e.innerText || e.textContent || '').trim() === label);
        if (!hits.length) return 'none';
        const el = hits[hits.length - 1];
        if (el.tagName === 'OPTION') {
            el.parentElement.value = el.value;
            el.parentElement.dispatchEvent(new Event('change', {bubbles: true}));
            return 'option';
        }
        el.click();
        return el.tagName;""", label)
    assert clicked != "none", f"no tab {label!r} on {driver.current_url}"
    return wait_for_text(driver, wanted, timeout, f"tab {label}")
def _why(api: Api, run_id: str, tmp_path: Path) -> str:
    logs = api.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
    worker = (tmp_path / "worker.log").read_text(errors="replace")[-4000:]
    return "\n".join(e["message"][-400:] for e in logs[-30:]) + "\n--- worker ---\n" + worker
