"""MLflow glue: a parent run per pipeline run, a nested run per stage, metrics streamed from rank 0.

Default store is SQLite under the work directory (no server); `MLFLOW_TRACKING_URI` or
`tracking.uri` points it at a server. Ray workers log through `RunTarget`, a picklable handle.
A store on this machine's disk with an `s3://` work directory works on one machine only: refused when a
Ray cluster is configured (its tasks on other nodes could not reach it), else a warning.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from llm import storage
from llm.config import TrackingConfig
from llm.errors import UserError, without_password


def resolve_tracking_uri(cfg: TrackingConfig, work_dir: str) -> str:
    """tracking.uri, else MLFLOW_TRACKING_URI, else sqlite:///<work_dir>/mlflow/mlflow.db (local work dirs)."""
    if cfg.uri:
        return cfg.uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{ensure_local_store(local_store_folder(work_dir))}"


log = logging.getLogger("llm.tracking")

# Tracking URIs already warned about (once per process each).
_warned: set[str] = set()


def is_local_store(uri: str) -> bool:
    """Whether a tracking URI is a store on this machine's disk (SQLite, a file store, a bare path)
    rather than a server every node can reach."""
    # `databricks` alone names a hosted server (MLflow's own shorthand), not a folder.
    return uri != "databricks" and urlsplit(uri).scheme in ("", "file", "sqlite")


def check_shared_store(uri: str, work_dir: str, ray_address: str | None = None) -> None:
    """With an `s3://` work directory and a tracking store on this machine's disk: a `UserError` when a
    Ray cluster is configured (`ray_address`, else RAY_ADDRESS; `local` is this machine), since its
    tasks on other nodes log to the store and cannot reach it; else a warning, once per store, that
    this works on one machine only. Nothing for a tracking server or a local work directory."""
    if not storage.is_s3(work_dir) or not is_local_store(uri):
        return
    setting = "ray.address" if ray_address else "RAY_ADDRESS"
    address = ray_address or os.environ.get("RAY_ADDRESS")
    where = without_password(uri)
    if address and address != "local":
        raise UserError(
            f"{setting} {address}: a Ray cluster with work_dir {work_dir} needs an MLflow tracking server "
            f"every node can reach, but tracking goes to {where} on this machine's disk; set "
            "MLFLOW_TRACKING_URI (or tracking.uri) to a server's http:// URL, or tracking.enabled=false")
    if uri not in _warned:
        _warned.add(uri)
        log.warning("work_dir %s is on S3 but MLflow tracking goes to %s on this machine's disk: that works "
                    "on one machine only; point MLFLOW_TRACKING_URI (or tracking.uri) at an MLflow server "
                    "before running on a Ray cluster", work_dir, where)


def local_store_folder(work_dir: str) -> Path:
    """Where the default local MLflow store (database and artifacts) lives: `<work_dir>/mlflow`, or
    `./work/mlflow` when the work directory is on S3."""
    base = work_dir if not storage.is_s3(work_dir) else "work"
    return Path(storage.absolute(base)) / "mlflow"


def ensure_local_store(folder: Path) -> Path:
    """The default store's database `<folder>/mlflow.db`, created when missing, with its artifact root
    `<folder>/artifacts`; returns its path.

    MLflow builds a new database in many steps (tables, then dozens of migrations): killed half-way,
    it leaves a file on which every later start fails. So it is built under a temporary name and
    renamed into place complete, by one process at a time (an flock on `mlflow.db.lock`: concurrent
    starts wait for the first and then use its store)."""
    db = folder / "mlflow.db"
    if db.exists():
        return db
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "mlflow.db.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if not db.exists():
            _create_store(db, folder / "artifacts")
    return db


def _create_store(db: Path, artifacts: Path) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    # Left by a creation that was killed; nobody else writes them while the lock is held.
    for leftover in db.parent.glob(f"{db.name}.tmp-*"):
        leftover.unlink(missing_ok=True)
    tmp = db.with_name(f"{db.name}.tmp-{os.getpid()}")
    # The default experiment made here gets its artifact root in the work directory too (MLflow's
    # own default would be `./mlruns` of the current folder).
    store = SqlAlchemyStore(f"sqlite:///{tmp}", artifacts.as_uri())
    store.engine.dispose()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, db)
    directory = os.open(db.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass(frozen=True)
class RunTarget:
    """Where a worker process logs: tracking URI + run id. Cheap to pickle into Ray tasks."""

    tracking_uri: str
    run_id: str

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        self.client().log_batch(self.run_id, metrics=batch, synchronous=True)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self.client().log_artifact(self.run_id, local_path, artifact_path)


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    """Nested config dict -> {"train.max_steps": "50", ...}; lists become JSON (MLflow params are strings)."""
    import json

    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[name] = text[:6000]  # MLflow's parameter value limit
    return out


class Tracker:
    """Creates the parent run of a pipeline run and one nested run per stage, with explicit run ids
    (no global "active run"), so stages running in threads or other processes never mix runs up."""

    def __init__(self, cfg: TrackingConfig, work_dir: str, ray_address: str | None = None):
        """`ray_address`: the configured `ray.address` (RAY_ADDRESS counts too), for
        `check_shared_store`."""
        self.enabled = cfg.enabled
        if cfg.enabled:  # before the default store is created: a refused run leaves nothing behind
            explicit = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI")
            check_shared_store(explicit or f"sqlite:///{local_store_folder(work_dir) / 'mlflow.db'}", work_dir,
                               ray_address)
        self.uri = resolve_tracking_uri(cfg, work_dir) if cfg.enabled else ""
        # The default store keeps its artifacts beside its database; MLflow's own default would be
        # `./mlruns` of whatever folder the command ran in. A configured store has its own root.
        self._artifacts = None
        if cfg.enabled and not (cfg.uri or os.environ.get("MLFLOW_TRACKING_URI")):
            self._artifacts = (local_store_folder(work_dir) / "artifacts").as_uri()
        self.experiment = cfg.experiment
        self._experiment_id: str | None = None
        self._setting = "tracking.uri" if cfg.uri else "MLFLOW_TRACKING_URI"

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            client = self.client()
            try:
                exp = client.get_experiment_by_name(self.experiment)
            except Exception as exc:
                # The first request of a run: a server that does not answer is reported here, once.
                error = unreachable_server(exc, self.uri, self._setting)
                if error is None:
                    raise
                raise error from exc
            self._experiment_id = exp.experiment_id if exp else self._create_experiment(client)
        return self._experiment_id

    def _create_experiment(self, client) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return client.create_experiment(self.experiment, artifact_location=self._artifacts)
        except MlflowException:
            # Another process on the same store made it since we looked: use theirs.
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def start_run(self, name: str, parent: str | None = None, params: dict | None = None,
                  tags: dict | None = None) -> RunTarget | None:
        if not self.enabled:
            return None
        from mlflow.entities import Param

        all_tags = {"mlflow.runName": name, **(tags or {})}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client().create_run(self.experiment_id(), run_name=name, tags=all_tags)
        target = RunTarget(self.uri, run.info.run_id)
        if params:
            items = [Param(k, v) for k, v in sorted(flatten(params).items())]
            for i in range(0, len(items), 100):  # MLflow's batch limit
                self.client().log_batch(target.run_id, params=items[i:i + 100])
        return target

    def finish(self, target: RunTarget | None, ok: bool = True) -> None:
        if target is not None:
            self.client().set_terminated(target.run_id, "FINISHED" if ok else "FAILED")

    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri {self.uri}" if self.uri else "(tracking disabled)"


def unreachable_server(exc: BaseException, uri: str, setting: str) -> UserError | None:
    """A `UserError` naming `setting` and the server when `exc` is MLflow failing to connect to an
    HTTP tracking server (refused, timed out, unknown host); None for any other error."""
    import requests

    err: BaseException | None = exc
    reason = None
    while err is not None:
        if isinstance(err, (requests.ConnectionError, requests.Timeout)):
            reason = "no answer in time" if isinstance(err, requests.Timeout) else "cannot connect"
        if reason and isinstance(err, OSError) and err.strerror:
            reason = err.strerror.lower()
        err = err.__cause__ or err.__context__
    if reason is None:
        return None
    return UserError(f"{setting} {without_password(uri)}: cannot reach the MLflow tracking server ({reason}); "
                     f"start it, or point {setting} at a running one (empty: a local store in the work directory)")


def log_dict(target: RunTarget | None, data: dict, artifact_file: str) -> None:
    """Write a dict as a JSON artifact of the run."""
    if target is not None:
        target.client().log_dict(target.run_id, data, artifact_file)
