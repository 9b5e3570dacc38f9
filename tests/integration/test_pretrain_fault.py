"""Fault tolerance on local Ray Train: a worker killed with SIGKILL mid-run is restarted from the last
checkpoint by Ray Train's failure handling (`train.max_failures`), keeps logging to the same MLflow run,
and ends with the same weights as a run that was never interrupted.

Metric history contract: steps run after the resumed checkpoint but before the kill are trained (and
logged) twice, so MLflow may hold two entries for those steps, with equal values (the resumed run is
bit-exact). Every other step appears exactly once, and no step is missing.
"""

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from llm.config import ModelConfig, TrainConfig
from llm.tracking import RunTarget
from llm.train.data import write_token_dataset
from tests.unit.train.tiny import VOCAB, counting_docs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_STEPS, CHECKPOINT_EVERY, LOG_EVERY = 40, 10, 5


def _train_worker_pids() -> set[int]:
    """PIDs of Ray Train worker processes (Ray titles them `ray::RayTrainWorker...`), read from /proc."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # the process ended while we looked
            continue
        if b"RayTrainWorker" in cmdline:
            pids.add(int(entry.name))
    return pids


def _weights_hash(checkpoint_uri: str) -> str:
    from llm.train.checkpoint import load_model_state

    digest = hashlib.sha256()
    for name, tensor in sorted(load_model_state(checkpoint_uri).items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


class _Killer(threading.Thread):
    """Waits for the first Ray Train checkpoint under `run_root`, then SIGKILLs the training worker and
    watches for the replacement worker Ray Train starts."""

    def __init__(self, run_root: Path):
        super().__init__(daemon=True)
        self.run_root = run_root
        self.stop = threading.Event()
        self.killed_pid: int | None = None
        self.checkpoint_step_at_kill: int | None = None
        self.replacement_pids: set[int] = set()

    def run(self) -> None:
        import json

        while not self.stop.is_set():
            # Ray Train's controller records the checkpoints it has registered in this file: a folder on
            # disk may not be registered yet, and a restart resumes from the registered one only.
            snapshots = list(self.run_root.glob("pretrain-*/checkpoint_manager_snapshot.json"))
            latest = None
            if snapshots:
                try:
                    latest = json.loads(snapshots[0].read_text()).get("latest_checkpoint_result")
                except (OSError, ValueError):  # being rewritten
                    latest = None
            pids = _train_worker_pids()
            if latest and pids:
                self.checkpoint_step_at_kill = int(latest["metrics"]["step"])
                self.killed_pid = min(pids)
                os.kill(self.killed_pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        while not self.stop.is_set() and not self.replacement_pids:
            self.replacement_pids = _train_worker_pids() - {self.killed_pid}
            time.sleep(0.05)


def test_killed_worker_resumes_from_checkpoint_into_the_same_mlflow_run(ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    from llm.train.trainer import pretrain

    tokens = str(tmp_path / "tokens")
    write_token_dataset(tokens, {"train": counting_docs(300, 0), "val": counting_docs(40, 1)}, vocab_size=VOCAB)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.create_experiment("fault-test", artifact_location=(tmp_path / "artifacts").as_uri())
    # Large enough that a step takes a few ms on one CPU, so the kill lands well before the end.
    model_cfg = ModelConfig(layers=2, hidden_size=64, attention_heads=2, context_length=64)
    train_cfg = TrainConfig(
        num_workers=1, cpus_per_worker=1, batch_size=8, micro_batch_size=4, learning_rate=1e-2, warmup_steps=5,
        max_steps=MAX_STEPS, eval_every=20, eval_batches=2, checkpoint_every=CHECKPOINT_EVERY, log_every=LOG_EVERY,
        seed=5, max_failures=1,
    )

    def run(name: str, killer: _Killer | None = None):
        run_id = client.create_run(experiment, run_name=name).info.run_id
        out = tmp_path / name
        if killer is not None:
            killer.run_root = out / "ray"
            killer.start()
        try:
            result = pretrain(model_cfg, train_cfg, tokens, str(out),
                              run_target=RunTarget(tracking_uri=tracking_uri, run_id=run_id))
        finally:
            if killer is not None:
                killer.stop.set()
                killer.join(timeout=5)
        return result, run_id

    reference, reference_run = run("uninterrupted")
    killer = _Killer(Path())
    faulted, faulted_run = run("killed", killer)

    # The kill happened mid-run, after a checkpoint, and Ray Train started a new worker.
    assert killer.killed_pid is not None, "no training worker was found to kill"
    assert killer.checkpoint_step_at_kill is not None and killer.checkpoint_step_at_kill < MAX_STEPS
    assert killer.replacement_pids, "Ray Train did not restart the killed worker"

    # Same outcome as the uninterrupted run, bit for bit.
    assert faulted.steps == reference.steps == MAX_STEPS
    assert faulted.tokens_seen == reference.tokens_seen
    assert _weights_hash(faulted.checkpoint_uri) == _weights_hash(reference.checkpoint_uri)
    assert faulted.final_val_loss == reference.final_val_loss

    # One MLflow run, continuous steps: every step once, except those re-run after the resumed checkpoint.
    expected_steps = list(range(LOG_EVERY, MAX_STEPS + 1, LOG_EVERY))
    reference_loss = {m.step: m.value for m in client.get_metric_history(reference_run, "loss")}
    assert sorted(reference_loss) == expected_steps
    history = client.get_metric_history(faulted_run, "loss")
    steps = [m.step for m in history]
    assert sorted(set(steps)) == expected_steps
    repeated = {s for s in steps if steps.count(s) > 1}
    assert all(steps.count(s) == 2 for s in repeated)
    assert all(s > killer.checkpoint_step_at_kill for s in repeated)
    # No more than one checkpoint interval re-runs.
    assert all(s <= killer.checkpoint_step_at_kill + 2 * CHECKPOINT_EVERY for s in repeated)
    for metric in history:
        assert metric.value == reference_loss[metric.step], metric.step
    # Validation follows the same rule; the initial one (step 0) is not repeated by the resumed worker.
    val_steps = [m.step for m in client.get_metric_history(faulted_run, "val_loss")]
    assert sorted(set(val_steps)) == [0, 20, 40] and val_steps.count(0) == 1
    assert all(s > killer.checkpoint_step_at_kill for s in val_steps if val_steps.count(s) > 1)

    # pretrain published the loss curve and the final model of the run that finished last.
    assert [f.path for f in client.list_artifacts(faulted_run, "plots")] == ["plots/loss_curve.png"]
    registry = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = registry.get_model_version_by_alias(train_cfg.registered_model, train_cfg.registered_model_alias)
    assert version.run_id == faulted_run
