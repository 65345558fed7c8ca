"""The team set-up, for real: PostgreSQL under the MLflow tracking server (proxied artifacts) and under the
Prefect server, and the pipeline end to end against both: training, evaluation, registration through the
gate, aliases, `ganpipe history`, the nightly deployment with its schedule, the watchdog automation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import make_project, tiny_params_dict
from tests.servers import mlflow_server, postgres, prefect_server

pytestmark = pytest.mark.slow  # servers and whole pipelines: `make test`, not `make test-fast`


def _ganpipe(project, env: dict, *argv: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "ganpipe", "-C", str(project), *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=900,
    )
    assert proc.returncode == 0, (
        f"ganpipe {' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def _rows(dsn: str, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def test_the_pipeline_runs_on_the_team_stack_on_postgresql(tmp_path, run_cli, monkeypatch):
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ganpipe.orchestration.watchdog import AUTOMATION
    from tests.conftest import nightly_deployment

    with (
        postgres(("mlflow", "prefect")) as pg,
        mlflow_server(f"postgresql://postgres@{pg}/mlflow", tmp_path / "artifacts") as tracking,
        prefect_server(tmp_path / "prefect-home", f"postgresql+asyncpg://postgres@{pg}/prefect") as api,
    ):
        team = {"MLFLOW_TRACKING_URI": tracking, "PREFECT_API_URL": api}
        project = make_project(tmp_path / "project", tiny_params_dict())
        first = _ganpipe(project, team, "run")
        assert "this run registered v1 (promoted)" in first
        second = _ganpipe(project, team, "run", "--force")  # the same seed again: no better, the gate refuses
        assert "this run registered v2 (not promoted)" in second

        client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
        name = "ganpipe-generator"
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
        assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"
        v2 = client.get_model_version(name, "2")
        assert v2.tags["gate.decision"] == "rejected" and "kid_better" in v2.tags["gate.reason"]
        # the registry commands in this process (seconds of imports less each), on the team's servers
        with temporary_settings({PREFECT_API_URL: api}):
            for k, v in team.items():
                monkeypatch.setenv(k, v)
            code, shown, err = run_cli("-C", project, "history")
            assert code == 0, err
            assert "v1  promoted" in shown and "v2  rejected" in shown and "aliases=champion" in shown
            code, moved, err = run_cli("-C", project, "promote", "--version", "2", "--reason", "team review")
            assert code == 0 and "champion: v1 -> v2" in moved, err
            code, _, err = run_cli("-C", project, "rollback", "--reason", "back")
            assert code == 0, err
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"

        # it all lives in PostgreSQL and on the server, nothing in the project
        dsn = f"postgresql://postgres@{pg}"
        assert _rows(f"{dsn}/mlflow", "SELECT version FROM model_versions ORDER BY version") == [(1,), (2,)]
        assert _rows(f"{dsn}/mlflow", "SELECT count(*) FROM runs WHERE status = 'FINISHED'")[0][0] >= 2
        assert any((tmp_path / "artifacts").rglob("generator.safetensors"))
        assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()
        states = {s for (s,) in _rows(f"{dsn}/prefect", "SELECT state_name FROM flow_run")}
        assert states == {"Completed"}, states

        # the nightly deployment with its schedule, and the watchdog automation, on the PostgreSQL server
        serving = subprocess.Popen(
            [sys.executable, "-m", "ganpipe", "-C", str(project), "schedule"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **team},
            start_new_session=True,
        )
        try:
            with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as prefect:
                deployment = _until(lambda: nightly_deployment(prefect), serving)
                (schedule,) = deployment.schedules
                assert schedule.schedule.cron == "0 2 * * *" and schedule.active
                assert prefect.read_automations_by_name(AUTOMATION)
        finally:
            serving.terminate()
            serving.wait(60)
        names = {n for (n,) in _rows(f"{dsn}/prefect", "SELECT name FROM automation")}
        assert AUTOMATION in names
        assert _rows(f"{dsn}/prefect", "SELECT count(*) FROM deployment_schedule WHERE active")[0][0] == 1


def _until(check, proc: subprocess.Popen, timeout_s: float = 180):
    import time

    deadline = time.monotonic() + timeout_s
    while (found := check()) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"`ganpipe schedule` did not serve the deployment:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    return found
