"""MLflow tracking set-up: where runs go and how stages attach to the training run.

Default store: `sqlite:///<project>/mlflow.db` with artifacts under `<project>/mlartifacts`;
`MLFLOW_TRACKING_URI` overrides. A project's new store starts as a copy of an empty store already
migrated to the installed MLflow's schema, kept in ganpipe's cache: MLflow migrates a new SQLite store
through its whole history of schema changes (in a new process, opening a new store took 1.4-1.6 s of
CPU, an existing one 0.6-0.8 s) once per machine instead of once per project. Nothing here runs at
import time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import time
import warnings
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ganpipe.core.redact import redact

# MLflow limits one log_batch call to 1000 metrics.
_BATCH = 1000
DATASET_ATTEMPTS = 5


def tracking_uri(root: str | Path) -> str:
    """$MLFLOW_TRACKING_URI, else the project's `mlflow.db`. On SQLite, MLflow 3 opens every session with
    `PRAGMA busy_timeout = 20000`: a writer waits up to 20 s for another instead of failing with
    "database is locked" (tests/test_tracking.py holds the lock longer than sqlite3's 5 s default)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def configure(root: str | Path) -> str:
    """Point MLflow (tracking and registry) at the project's store; return the URI."""
    uri, db = tracking_uri(root), Path(root).resolve() / "mlflow.db"
    if uri == f"sqlite:///{db}":  # the project's own store, not $MLFLOW_TRACKING_URI
        seed_store(db)
    before = {k: os.environ.get(k) for k in _URI_VARS}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # MLflow also exports the URIs to os.environ; undo that, or the next project's store (or a
    # child process) would mistake this one for the user's MLFLOW_TRACKING_URI override.
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if redact(uri) != uri:  # MLflow prints "View run at <URI>" links with the URI as given, password included
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    return uri


def seed_store(db: Path) -> None:
    """Create the project's SQLite store `db`, unless it exists, as a copy of the migrated template; its
    Default experiment's artifacts go where MLflow would have put them (`mlruns/0` beside the store)."""
    if db.exists() or not db.parent.is_dir():  # no project directory: nothing to seed (MLflow would fail too)
        return
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(_store_template(), tmp)
        with contextlib.closing(sqlite3.connect(tmp)) as conn, conn:
            conn.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                (str(db.parent / "mlruns" / "0"),),
            )
        os.link(tmp, db)  # never replaces a store another process created meanwhile
    except (OSError, sqlite3.Error):  # that store (FileExistsError), no writable cache, a damaged template:
        pass  # MLflow opens or creates the store itself
    finally:
        tmp.unlink(missing_ok=True)


def _store_template() -> Path:
    """An empty MLflow SQLite store at the installed MLflow's schema head, built on first need."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from ganpipe.core.cache import cache_dir
    from ganpipe.core.io import atomic_path

    template = cache_dir() / f"mlflow-store-{mlflow.__version__}.db"
    if template.exists():
        return template
    with atomic_path(template) as tmp:  # whole or not at all; a concurrent builder's copy is the same
        store = SqlAlchemyStore(f"sqlite:///{tmp}", str(template.parent / "mlruns"))  # creates and migrates
        store.engine.dispose()
    return template


def experiment_id(name: str, root: str | Path) -> str:
    """Get or create the experiment; new ones keep artifacts in `<project>/mlartifacts` for local stores."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri(root).startswith("sqlite:"):
        location = (Path(root).resolve() / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # Another process created it between our lookup and create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def log_metric_series(run_id: str, series: list[tuple[str, float, int]]) -> None:
    """Log (key, value, step) triples in as few calls as MLflow allows."""
    client = MlflowClient()
    import time

    ts = int(time.time() * 1000)
    metrics = [Metric(key, float(v), ts, int(step)) for key, v, step in series]
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + _BATCH], synchronous=True)


def run_result(run_id: str) -> dict:
    """The evaluation result logged to a run: its metrics, fingerprint and protocol tags."""
    from ganpipe.core.errors import DataError

    try:
        run = MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise DataError(f"runs:/{run_id}: {exc.message.splitlines()[0]}") from None
    prefix = "eval.protocol."
    protocol = {k[len(prefix) :]: v for k, v in run.data.tags.items() if k.startswith(prefix)}
    return {
        **{k: float(v) for k, v in run.data.metrics.items()},
        "fingerprint": run.data.tags.get("eval.fingerprint", ""),
        "protocol": protocol,
    }


def git_commit(root: str | Path) -> str:
    """HEAD commit of the project repo, with '-dirty' when tracked files changed; 'unknown' outside git."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def log_dataset(prepared_dir: str | Path, manifest: dict, dvc_md5: str) -> None:
    """The prepared data as the active run's dataset input (MLflow's Datasets tab): its content sha256,
    source and the hash DVC recorded for it, so a run says exactly what it was trained on."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # MLflow registers its local-path source twice and says so on every call
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(prepared_dir).resolve()))
    ds = MetaDataset(source, name=manifest["source"], digest=manifest["sha256"][:16])
    tags = {"sha256": manifest["sha256"], "dvc_md5": dvc_md5 or "unknown", "source": manifest["source"]}
    for attempt in range(DATASET_ATTEMPTS):
        try:
            mlflow.log_input(ds, context="training", tags=tags)
            return
        except mlflow.exceptions.MlflowException as exc:
            # MLflow inserts a dataset when it finds none: two trainings of the same data starting at once
            # (a parallel sweep) race, and the loser's whole transaction is rolled back. Retried, it finds
            # the winner's row and links to it.
            msg = str(exc).lower()  # SQLite/PostgreSQL: "unique constraint ... datasets"; MySQL: "duplicate entry"
            lost_race = "datasets" in msg and ("unique constraint" in msg or "duplicate entry" in msg)
            if not lost_race or attempt == DATASET_ATTEMPTS - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


FLOW_RUN_TAG = "ganpipe.prefect_flow_run_id"  # the Prefect flow run that made a training run (studio links it)


def describe_run(run_id: str, markdown: str, flow_run_id: str | None = None) -> None:
    """Set a run's description (the MLflow UI's notes) to `markdown`, and name the flow run behind it."""
    MlflowClient().set_tag(run_id, "mlflow.note.content", markdown)
    if flow_run_id:
        MlflowClient().set_tag(run_id, FLOW_RUN_TAG, flow_run_id)


def log_skipped_run(root: str | Path, experiment: str, reason: str, markdown: str) -> str:
    """A run that records a pipeline run that had nothing to do (seen in the MLflow UI); returns its id."""
    configure(root)
    with mlflow.start_run(experiment_id=experiment_id(experiment, root), run_name="skipped: nothing changed") as run:
        mlflow.set_tags({"ganpipe.stage": "pipeline", "ganpipe.skipped": reason, "mlflow.note.content": markdown})
    return run.info.run_id


CRASH_TAG = "ganpipe.crashed"  # a training that lost a process of its job ended its run with this: a crash


def crashed(run_id: str, message: str) -> bool:
    """Whether a training's run ended as a crash, worth a retry that resumes: its process died and left it
    RUNNING (marked FAILED here, `message` as tag ganpipe.failure), or it lost a process of a
    multi-process job and said so with CRASH_TAG. Not a training that failed on its own (diverged)."""
    if fail_run_if_running(run_id, message):
        return True
    try:
        return CRASH_TAG in MlflowClient().get_run(run_id).data.tags
    except mlflow.exceptions.MlflowException:
        return False


def fail_run_if_running(run_id: str, message: str) -> bool:
    """Mark a run that its process left RUNNING (killed, out of memory) as FAILED, with the reason as
    tag `ganpipe.failure`; True when it did. A resumed training reopens the same run."""
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    if run.info.status != "RUNNING":
        return False
    client.set_tag(run_id, "ganpipe.failure", message[:5000])
    client.set_terminated(run_id, status="FAILED")
    return True
