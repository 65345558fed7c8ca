"""Where runs go: the project's SQLite store unless the user says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from ganpipe.core import tracking


def test_each_project_gets_its_own_store_even_after_configure(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    assert tracking.configure(a) == f"sqlite:///{a / 'mlflow.db'}"
    assert mlflow.get_tracking_uri() == f"sqlite:///{a / 'mlflow.db'}"
    # MLflow exports the URI to the environment; configure() must not leave it there as an "override"
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert tracking.tracking_uri(b) == f"sqlite:///{b / 'mlflow.db'}"


def test_user_override_wins_and_survives_configure(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'team.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.configure(tmp_path / "project") == uri
    assert os.environ["MLFLOW_TRACKING_URI"] == uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def _lock_sqlite(db, seconds: float) -> subprocess.Popen:
    """Another process holding SQLite's write lock on `db` for `seconds` (a concurrent run's commit)."""
    code = (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "c.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\n"
        f"time.sleep({seconds})\nc.execute('ROLLBACK')\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_writer_waits_for_a_locked_sqlite_store_instead_of_failing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure(tmp_path)
    exp = tracking.experiment_id("demo", tmp_path)
    holder = _lock_sqlite(tmp_path / "mlflow.db", 7.0)  # a concurrent commit, longer than sqlite3's 5 s default
    try:
        run = MlflowClient().create_run(exp)  # waits for the lock (busy timeout), then writes
        assert holder.poll() is not None  # it did wait: the holder was done first
        assert MlflowClient().get_run(run.info.run_id).info.status == "RUNNING"
    finally:
        holder.wait(timeout=60)


_SAME_DATA_AT_ONCE = """
import sys, time
from pathlib import Path
import mlflow
from ganpipe.core import tracking
root, go, rounds = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
tracking.configure(root)
for i in range(rounds):
    exp = tracking.experiment_id(f"sweep-{i}", root)
    while time.time() < go + 0.4 * i:  # both processes log the same data to experiment i at one instant
        time.sleep(0.0005)
    with mlflow.start_run(experiment_id=exp):
        tracking.log_dataset(root, {"source": "digits", "sha256": "ab" * 32}, "md5")
"""


@pytest.mark.slow  # two training processes: `make test`, not the in-process inner loop
def test_trainings_of_the_same_data_starting_at_once_both_log_it(tmp_path, monkeypatch):
    # a parallel sweep: MLflow's insert-if-missing of the dataset races between the two processes
    import time

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rounds = 8
    tracking.configure(tmp_path)
    for i in range(rounds):
        tracking.experiment_id(f"sweep-{i}", tmp_path)  # the store and experiments exist before the race
    go = time.time() + 6  # after both interpreters have imported MLflow
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SAME_DATA_AT_ONCE, str(tmp_path), str(go), str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    client = MlflowClient()
    runs = client.search_runs([tracking.experiment_id(f"sweep-{i}", tmp_path) for i in range(rounds)])
    assert len(runs) == 2 * rounds
    assert all([d.dataset.digest for d in r.inputs.dataset_inputs] == ["abababababababab"] for r in runs)


def test_a_lost_dataset_insert_race_is_retried_and_other_errors_are_not(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure(tmp_path)
    real, calls = mlflow.log_input, []

    def racing(*args, **kwargs):  # the other process inserted the same dataset first, once
        calls.append(1)
        if len(calls) == 1:
            raise mlflow.exceptions.MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: "
                "datasets.experiment_id, datasets.name, datasets.digest"
            )
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", racing)
    with mlflow.start_run(experiment_id=tracking.experiment_id("demo", tmp_path)) as run:
        tracking.log_dataset(tmp_path, {"source": "digits", "sha256": "cd" * 32}, "md5")
    assert len(calls) == 2
    assert [d.dataset.digest for d in MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs] == [
        "cdcdcdcdcdcdcdcd"
    ]

    def broken(*args, **kwargs):
        calls.append(1)
        raise mlflow.exceptions.MlflowException("UNIQUE constraint failed: runs.run_uuid")

    monkeypatch.setattr(mlflow, "log_input", broken)
    calls.clear()
    with mlflow.start_run(experiment_id=tracking.experiment_id("demo", tmp_path)):
        with pytest.raises(mlflow.exceptions.MlflowException, match="runs.run_uuid"):
            tracking.log_dataset(tmp_path, {"source": "digits", "sha256": "cd" * 32}, "md5")
    assert len(calls) == 1  # not a dataset race: raised at once


def test_new_experiments_keep_artifacts_in_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure(tmp_path)
    exp_id = tracking.experiment_id("demo", tmp_path)
    assert exp_id == tracking.experiment_id("demo", tmp_path)  # get-or-create
    location = mlflow.get_experiment(exp_id).artifact_location
    assert location == (tmp_path / "mlartifacts").as_uri()


def test_git_commit_outside_a_repo_is_unknown(tmp_path):
    assert tracking.git_commit(tmp_path) == "unknown"


def _schema(db) -> tuple[list, list]:
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as c:
        rows = c.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        # each table's and index's definition, clause by clause (MLflow's migrations order a table's
        # constraints differently from one run to the next)
        tables = sorted(
            (t, n, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines())) for t, n, sql in rows
        )
        return tables, c.execute("SELECT version_num FROM alembic_version").fetchall()


def test_a_new_store_is_a_copy_of_mlflows_own_migrated_store_and_an_existing_one_is_kept(tmp_path, monkeypatch):
    """A project's new store is copied from a template in ganpipe's cache instead of migrated (~0.8 s of
    CPU each): the same schema as the one MLflow builds itself, the Default experiment's artifacts beside
    it. Without a writable cache MLflow builds the store itself."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("GANPIPE_CACHE_DIR", str(tmp_path / "cache"))
    own = SqlAlchemyStore(f"sqlite:///{tmp_path / 'own.db'}", str(tmp_path / "own-artifacts"))  # MLflow's
    own.engine.dispose()
    a = tmp_path / "a"
    a.mkdir()
    tracking.configure(a)
    (template,) = (tmp_path / "cache").glob("mlflow-store-*.db")
    assert _schema(a / "mlflow.db") == _schema(tmp_path / "own.db") == _schema(template)
    # the store works: a run and a registered version in it, Default's artifacts in the project
    client = MlflowClient()
    assert client.get_experiment("0").artifact_location == str(a / "mlruns" / "0")
    run = client.create_run(tracking.experiment_id("ganpipe", a))
    client.log_metric(run.info.run_id, "kid", 0.5)
    client.create_registered_model("m")
    client.create_model_version("m", f"{run.info.artifact_uri}/model", run.info.run_id)
    tracking.configure(a)  # an existing store is never replaced
    assert client.get_run(run.info.run_id).data.metrics == {"kid": 0.5}
    assert [str(v.version) for v in client.search_model_versions("name='m'")] == ["1"]
    # the template stays empty; the next project gets its own copy
    b = tmp_path / "b"
    b.mkdir()
    tracking.configure(b)
    assert MlflowClient().search_registered_models() == [] and not list(b.glob(".mlflow.db.*"))
    assert [e.name for e in MlflowClient(f"sqlite:///{template}").search_experiments()] == ["Default"]
    # a cache that cannot be written (here a file where its folder should be): no template, MLflow's own store
    monkeypatch.setenv("GANPIPE_CACHE_DIR", str(tmp_path / "own.db" / "cache"))
    c = tmp_path / "c"
    c.mkdir()
    tracking.configure(c)
    assert MlflowClient().create_experiment("x") and _schema(c / "mlflow.db") == _schema(tmp_path / "own.db")
