"""The team set-up: prefect.yaml deploys the flow to a process work pool on a real Prefect server (the
test harness), with the schedule of params.yaml, and a worker runs it to completion."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from ganpipe.orchestration.watchdog import AUTOMATION
from tests.conftest import REPO, forget_nightly, shipped_params

pytestmark = pytest.mark.slow  # whole pipelines, servers or killed processes: `make test`, not `make test-fast`


def test_prefect_yaml_agrees_with_params():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (dep,) = spec["deployments"]
    assert dep["name"] == shipped_params()["schedule"]["deployment"]
    assert dep["entrypoint"] == "flows/training_pipeline.py:training_pipeline"
    assert dep["schedules"][0]["cron"] == "{{ cron.stdout }}"  # from params.yaml, not written twice


def _prefect(args: list[str], cwd, env) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_work_pool_deployment_runs_through_a_worker(reproduced_project, tiny_raw, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    project = reproduced_project.resolve()  # up to date: the worker's run checks DVC there and ends Skipped
    shutil.copytree(REPO / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_WORKER_QUERY_SECONDS": "1"}
    _prefect(["work-pool", "create", "ganpipe", "--type", "process"], project, env)
    _prefect(["--no-prompt", "deploy", "--all"], project, env)
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("training-pipeline/nightly")
        try:
            assert dep.work_pool_name == "ganpipe"
            (sched,) = dep.schedules
            assert (sched.schedule.cron, sched.schedule.timezone, sched.active) == ("0 2 * * *", "UTC", True)
            assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}]
            sp = tiny_raw["schedule"]  # heartbeats and the watchdog automation, from params.yaml too
            assert dep.job_variables == {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(sp["heartbeat_s"])}}
            (guard,) = client.read_automations_by_name(AUTOMATION)
            assert guard.enabled and guard.trigger.within.total_seconds() == sp["crashed_after_s"]

            flow_run = run_deployment("training-pipeline/nightly", timeout=0)  # queued for the pool
            _prefect(["worker", "start", "--pool", "ganpipe", "--run-once"], project, env)
            state = client.read_flow_run(flow_run.id).state
        finally:  # the served deployment of test_schedule has the same name on the shared test server
            forget_nightly(client)
    assert state.is_completed() and state.name == "Skipped" and "nothing changed" in state.message, state
    assert (project / "reports" / "registration.json").exists()
    assert yaml.safe_load((project / "dvc.lock").read_text())["stages"].keys() >= {"train", "register"}
