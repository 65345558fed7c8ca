"""The nightly deployment, served by `ganpipe schedule` against a real Prefect server (the test harness)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from ganpipe.core.errors import ConfigError
from ganpipe.core.params import ScheduleParams
from tests.conftest import forget_nightly, nightly_deployment

pytestmark = pytest.mark.slow  # whole pipelines, servers or killed processes: `make test`, not `make test-fast`


def test_schedule_without_a_server_is_one_clear_error(project, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    proc = subprocess.run(
        [sys.executable, "-m", "ganpipe", "-C", str(project), "schedule"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
    )
    assert proc.returncode == 2 and "no Prefect server: start one with `ganpipe server`" in proc.stderr


def _nightly() -> dict:
    from tests.conftest import shipped_params

    return shipped_params()["schedule"]


def test_bad_cron_and_time_zone_are_config_errors():
    from ganpipe.orchestration.schedule import cron_schedule

    with pytest.raises(ConfigError, match="schedule.cron = '61 2 \\* \\* \\*'"):
        cron_schedule(ScheduleParams(**{**_nightly(), "cron": "61 2 * * *"}))
    with pytest.raises(ValueError, match="IANA time zone"):
        ScheduleParams(**{**_nightly(), "timezone": "Mars/Olympus"})


def test_flows_started_under_heartbeats_beat_at_the_params_cadence(monkeypatch):
    from prefect.settings import get_current_settings

    from ganpipe.orchestration.watchdog import HEARTBEAT_ENV, heartbeats

    monkeypatch.delenv(HEARTBEAT_ENV, raising=False)
    sp = ScheduleParams(**{**_nightly(), "heartbeat_s": 45, "crashed_after_s": 100})
    with heartbeats(sp):
        assert get_current_settings().flows.heartbeat_frequency == 45  # flows run in this process
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "from prefect.settings import get_current_settings as s; print(s().flows.heartbeat_frequency)",
            ],
            capture_output=True,
            text=True,
        )
        assert child.stdout.strip() == "45"  # served runs: child processes
    assert HEARTBEAT_ENV not in os.environ and get_current_settings().flows.heartbeat_frequency != 45


def test_nightly_deployment_is_served_triggered_and_kept_after_shutdown(reproduced_project, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    project = reproduced_project  # up to date: the triggered run checks `dvc status` there and ends Skipped
    url = PREFECT_API_URL.value()
    env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ganpipe", "-C", str(project), "schedule"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        with get_client(sync_client=True) as client:
            deployment = _wait("deployment", lambda: nightly_deployment(client), 120, proc)
            (sched,) = deployment.schedules
            assert sched.schedule.cron == "0 2 * * *" and sched.schedule.timezone == "UTC" and sched.active
            assert deployment.parameters == {"project_dir": str(project.resolve())}
            # what the server's scheduler does: materialise the next runs; the first is the next 02:00 UTC
            client.request("POST", f"/deployments/{deployment.id}/schedule", json={"max_runs": 3})
            now = datetime.now(UTC)
            expected = now.replace(hour=2, minute=0, second=0, microsecond=0)
            if expected <= now:
                expected += timedelta(days=1)
            scheduled = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["SCHEDULED"]))
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            )
            assert scheduled and scheduled[0].expected_start_time == expected
            assert [r.expected_start_time - expected for r in scheduled[:3]] == [timedelta(days=d) for d in range(3)]
            client.delete_flow_run(scheduled[0].id)  # keep the served process to the run triggered below
            for r in scheduled[1:]:
                client.delete_flow_run(r.id)

            run = run_deployment("training-pipeline/nightly", timeout=600)  # picked up by the served process
            assert run.state.is_completed() and run.state.name == "Skipped", run.state
            assert "nothing changed" in run.state.message  # it ran in the project: DVC found it up to date
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
        with get_client(sync_client=True) as client:
            kept = client.read_deployment_by_name("training-pipeline/nightly")
        assert kept.schedules[0].active  # a restart of the serving process finds its schedule unpaused
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        with get_client(sync_client=True) as client:
            forget_nightly(client)


def _training_in(root) -> bool:
    import psutil

    for p in root.children(recursive=True):
        try:
            if p.cmdline()[-1:] == ["train"]:  # ganpipe train, started by dvc repro
                return True
        except psutil.Error:
            pass
    return False


def _kill_tree(root) -> list:
    """SIGKILL `root` (a psutil.Process, or None) and every descendant, as a lost machine would; the
    flow run process is in its own session, so a process-group kill would miss it."""
    import psutil

    if root is None:
        return []
    try:
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=30)
    return tree


def _wait(what: str, check, timeout_s: float, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"`ganpipe schedule` exited while waiting for {what}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s:.0f} s")
        time.sleep(1)
    return found


def test_a_run_whose_machine_dies_is_marked_crashed_by_the_watchdog(reproduced_project, prefect_harness, webhook):
    """Runner, flow process and training all SIGKILLed at once (a lost machine): nothing is left to report,
    so only the server-side automation can end the run, once its heartbeats stop, and post the failure
    notice. A run that ended normally is left alone."""
    import psutil
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    from ganpipe.orchestration.watchdog import AUTOMATION, NOTIFIER

    with get_client(sync_client=True) as client:  # what earlier tests left on the shared server
        forget_nightly(client)
    url, received = webhook
    sp = {"heartbeat_s": 30, "crashed_after_s": 60, "webhook_url": url}  # Prefect's shortest heartbeat: 30 s
    project = reproduced_project  # up to date: the first run ends at once (Skipped), the second trains
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["schedule"].update(sp)  # no stage reads schedule.*: still up to date
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ganpipe", "-C", str(project), "schedule"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    with get_client(sync_client=True) as client:
        try:
            _wait("deployment", lambda: nightly_deployment(client), 120, proc)
            (guard,) = client.read_automations_by_name(AUTOMATION)
            assert guard.enabled and guard.trigger.within.total_seconds() == sp["crashed_after_s"]
            assert [a.enabled for a in client.read_automations_by_name(NOTIFIER)] == [True]

            finished = run_deployment("training-pipeline/nightly", timeout=600)
            assert finished.state.is_completed() and finished.state.name == "Skipped", finished.state

            raw["train"]["total_kimg"] = 500.0  # minutes of training: it will be running when the machine dies
            (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
            doomed = run_deployment("training-pipeline/nightly", timeout=0)

            def training():
                runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[doomed.id])))
                return any(r.name.startswith("train") and r.state is not None and r.state.is_running() for r in runs)

            _wait("running training", training, 300, proc)
            root = psutil.Process(proc.pid)
            _wait("ganpipe train process", lambda: _training_in(root), 120, proc)
            tree = _kill_tree(root)
            assert len(tree) >= 4, tree  # runner, flow run process, dvc, ganpipe train
            killed_at = time.monotonic()
            assert client.read_flow_run(doomed.id).state.is_running()  # what a lost machine leaves

            crashed = _wait(
                "Crashed state",
                lambda: (s := client.read_flow_run(doomed.id).state).is_crashed() and s,
                sp["heartbeat_s"] + sp["crashed_after_s"] + 60,
            )
            assert "no heartbeat for 60 s" in crashed.message
            assert time.monotonic() - killed_at > sp["crashed_after_s"] - sp["heartbeat_s"]  # not before it was due
            assert client.read_flow_run(finished.id).state.is_completed()  # ended normally: left alone
            (notice,) = _wait("failure notice", lambda: received, 30)
            assert notice == {
                "text": f"ganpipe: flow run training-pipeline/{doomed.name} crashed: {crashed.message}",
                "flow": "training-pipeline",
                "flow_run_name": doomed.name,
                "flow_run_id": str(doomed.id),
                "state": "Crashed",
                "message": crashed.message,
                "project_dir": str(project.resolve()),
            }
            time.sleep(5)
            assert len(received) == 1  # the finished run was not reported
        finally:
            _kill_tree(psutil.Process(proc.pid) if proc.poll() is None else None)
            # the dead training's slot lease expires after crashed_after_s on a real server; the test
            # harness runs no lease repossessor, so free the device for the tests that follow
            from ganpipe.orchestration.pipeline import training_slot_name

            client.delete_global_concurrency_limit_by_name(training_slot_name(raw["base"]["device"]))
            forget_nightly(client)
