"""The nightly deployment, served by `ganpipe schedule` against a real Prefect server (the test harness)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from ganpipe.errors import ConfigError
from ganpipe.params import ScheduleParams


def test_schedule_without_a_server_is_one_clear_error(project, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    proc = subprocess.run([sys.executable, "-m", "ganpipe", "-C", str(project), "schedule"], capture_output=True,
                          text=True, env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"})
    assert proc.returncode == 2 and "no Prefect server: start one with `ganpipe server`" in proc.stderr


def test_bad_cron_and_time_zone_are_config_errors():
    from ganpipe.schedule import cron_schedule

    with pytest.raises(ConfigError, match="schedule.cron = '61 2 \\* \\* \\*'"):
        cron_schedule(ScheduleParams(deployment="nightly", cron="61 2 * * *", timezone="UTC"))
    with pytest.raises(ValueError, match="IANA time zone"):
        ScheduleParams(deployment="nightly", cron="0 2 * * *", timezone="Mars/Olympus")


def test_nightly_deployment_is_served_triggered_and_kept_after_shutdown(project, prefect_harness):
    from prefect.client.orchestration import get_client
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
