"""Where runs go: the project's SQLite store unless the user says otherwise."""

from __future__ import annotations

import os

import mlflow

from ganpipe import tracking


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


def test_new_experiments_keep_artifacts_in_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure(tmp_path)
    exp_id = tracking.experiment_id("demo", tmp_path)
    assert exp_id == tracking.experiment_id("demo", tmp_path)  # get-or-create
    location = mlflow.get_experiment(exp_id).artifact_location
    assert location == (tmp_path / "mlartifacts").as_uri()


def test_git_commit_outside_a_repo_is_unknown(tmp_path):
    assert tracking.git_commit(tmp_path) == "unknown"
