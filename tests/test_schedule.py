"""The nightly deployment, served by `ganpipe schedule` against a real Prefect server (the test harness)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from ganpipe.errors import ConfigError
from ganpipe.params import ScheduleParams


def test_schedule_without_a_server_is_one_clear_error(project, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    proc = subprocess.run([sys.executable, "-m", "ganpipe", "-C", str(project), "schedule"], capture_output=True,
                          text=True, env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"})
    assert proc.returncode == 2 and "no Prefect server: start one with `ganpipe server`" in proc.stderr


def _nightly() -> dict:
    from tests.conftest import shipped_params

    return shipped_params()["schedule"]


def test_bad_cron_and_time_zone_are_config_errors():
    from ganpipe.schedule import cron_schedule

    with pytest.raises(ConfigError, match="schedule.cron = '61 2 \\* \\* \\*'"):
        cron_schedule(ScheduleParams(**{**_nightly(), "cron": "61 2 * * *"}))
    with pytest.raises(ValueError, match="IANA time zone"):
        ScheduleParams(**{**_nightly(), "timezone": "Mars/Olympus"})


def test_nightly_deployment_is_served_triggered_and_kept_after_shutdown(project, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterState, FlowRunFilterStateType)
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "ganpipe", "-C", str(project), "schedule"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deployment, deadline = None, time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while deployment is None:
                try:
                    deployment = client.read_deployment_by_name("training-pipeline/nightly")
                except Exception:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"no deployment appeared:\n{proc.stdout.read()[-3000:] if proc.poll() is not None else ''}")
                    time.sleep(1)
            (sched,) = deployment.schedules
            assert sched.schedule.cron == "0 2 * * *" and sched.schedule.timezone == "UTC" and sched.active
            assert deployment.parameters == {"project_dir": str(project.resolve())}
            # what the server's scheduler does: materialise the next runs; the first is the next 02:00 UTC
            client.request("POST", f"/deployments/{deployment.id}/schedule", json={"max_runs": 3})
            now = datetime.now(timezone.utc)
            expected = now.replace(hour=2, minute=0, second=0, microsecond=0)
            if expected <= now:
                expected += timedelta(days=1)
            scheduled = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["SCHEDULED"]))),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC)
            assert scheduled and scheduled[0].expected_start_time == expected
            assert [r.expected_start_time - expected for r in scheduled[:3]] == [timedelta(days=d) for d in range(3)]
            client.delete_flow_run(scheduled[0].id)  # keep the served process to the run triggered below
            for r in scheduled[1:]:
                client.delete_flow_run(r.id)

            run = run_deployment("training-pipeline/nightly", timeout=600)  # picked up by the served process
            assert run.state.is_completed(), run.state
            assert (project / "reports" / "registration.json").exists()
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
        with get_client(sync_client=True) as client:
            kept = client.read_deployment_by_name("training-pipeline/nightly")
        assert kept.schedules[0].active  # a restart of the serving process finds its schedule unpaused
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
