"""Failure handling of the training-pipeline flow on a real Prefect server (the test harness): a killed
training task is retried and resumes, one training per device, failure notices reach a webhook."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_project, mlflow_client, tiny_params_dict

pytestmark = pytest.mark.slow  # whole pipelines, servers or killed processes: `make test`, not `make test-fast`


def _pids_running(cmdline: str, cwd: Path) -> list[int]:
    """Processes whose command line contains `cmdline` and whose working directory is `cwd`."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if cmdline in args and Path(os.readlink(d / "cwd")) == cwd:
                found.append(int(d.name))
        except OSError:
            continue
    return found


def _run_and_kill_training_once(tmp_path, train_retries: int):
    """The training-pipeline flow on a tiny project whose training process gets SIGKILLed once it has
    written its first snapshot; returns (project, flow run state, what was killed)."""
    from ganpipe.nets.checkpoint import load_checkpoint
    from ganpipe.orchestration.pipeline import training_pipeline

    raw = tiny_params_dict(
        # seconds of training after the first snapshot: the kill lands mid-run
        train={"total_kimg": 9.6, "snapshot_kimg": 1.6, "collapse_after_kimg": 1000.0},
        schedule={"train_retries": train_retries},
    )
    project = make_project(tmp_path / "project", raw).resolve()
    first = project / "models.partial" / "snapshot-000000001600.pt"
    killed: dict = {}

    def kill_training_once_it_has_a_snapshot() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if first.exists():
                pids = _pids_running("ganpipe train", project)
                if pids:
                    killed["run_id"] = load_checkpoint(first)["mlflow_run_id"]
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)  # what the kernel's OOM killer does
                    killed["pids"] = pids
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_training_once_it_has_a_snapshot, daemon=True)
    killer.start()
    state = training_pipeline(project_dir=str(project), return_state=True)
    killer.join(timeout=5)
    assert killed.get("pids"), "the training process was never killed"
    return project, state, killed


def test_a_killed_training_task_is_retried_and_resumes_in_the_same_mlflow_run(tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    project, state, killed = _run_and_kill_training_once(tmp_path, train_retries=1)
    assert state.is_completed(), state
    result = state.result()
    assert result["promoted"] and result["version"] == "1"

    info = json.loads((project / "models" / "run.json").read_text())
    assert info["resumed_from_kimg"] and info["resumed_from_kimg"] >= 1.6 and info["kimg"] >= 9.6
    assert info["mlflow_run_id"] == killed["run_id"]  # the retry continued the killed attempt's run
    run = mlflow_client(project).get_run(killed["run_id"])
    assert run.info.status == "FINISHED"
    assert "died or was killed" in run.data.tags["ganpipe.interrupted"]  # marked FAILED in between
    assert "ganpipe.failure" not in run.data.tags
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    (train_run,) = [r for r in runs if r.name.startswith("train")]
    assert train_run.run_count == 2 and train_run.state.is_completed()


def test_a_killed_training_without_retries_fails_the_flow_and_the_mlflow_run(tmp_path, prefect_harness):
    project, state, killed = _run_and_kill_training_once(tmp_path, train_retries=0)
    assert state.is_failed(), state  # not left "Running"
    assert "the training process died" in state.message
    run = mlflow_client(project).get_run(killed["run_id"])
    assert run.info.status == "FAILED" and "died or was killed" in run.data.tags["ganpipe.failure"]
    assert not (project / "reports" / "registration.json").exists()  # nothing registered


def test_one_training_at_a_time_per_device(prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    from ganpipe.orchestration.pipeline import ensure_limit, training_slot_name

    name = training_slot_name("cpu")
    assert name.startswith("ganpipe-train-") and name.endswith("-cpu")
    ensure_limit(name)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with concurrency(name, occupy=1, strict=True):
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(60)
    try:
        with pytest.raises(TimeoutError):
            with concurrency(name, occupy=1, timeout_seconds=3, strict=True):
                pass  # a second training on the same device waits for the first
    finally:
        release.set()
        holder.join(timeout=30)
    with concurrency(name, occupy=1, timeout_seconds=30, strict=True):
        pass  # free again once the first ended
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(
            name, __import__("prefect.client.schemas.actions", fromlist=["x"]).GlobalConcurrencyLimitUpdate(limit=2)
        )
        try:
            ensure_limit(name)  # a limit the team set stays as they set it
            assert client.read_global_concurrency_limit_by_name(name).limit == 2
        finally:  # the later flows of this test process train one at a time again
            client.delete_global_concurrency_limit_by_name(name)


def test_a_failed_run_posts_to_the_webhook(tmp_path, prefect_harness, webhook):
    from ganpipe.orchestration.pipeline import training_pipeline

    url, received = webhook
    raw = tiny_params_dict(data={"min_images": 100000}, schedule={"webhook_url": url})  # prepare must fail
    project = make_project(tmp_path / "project", raw)
    state = training_pipeline(project_dir=str(project), return_state=True)
    assert state.is_failed()
    deadline = time.monotonic() + 30
    while not received and time.monotonic() < deadline:
        time.sleep(0.2)
    (notice,) = received
    assert notice["flow"] == "training-pipeline" and notice["state"] == "Failed"
    assert "stage 'prepare' failed" in notice["message"] and notice["text"].startswith("ganpipe: flow run")
    assert notice["project_dir"] == str(project)
    assert yaml.safe_load((project / "params.yaml").read_text())["schedule"]["webhook_url"] == url


def test_only_a_crashed_training_is_retried():
    from prefect.states import Failed

    from ganpipe.orchestration.pipeline import StageFailed, TrainingCrashed, _retry_if_crashed

    assert _retry_if_crashed(None, None, Failed(data=TrainingCrashed("killed")))
    # diverged past its rollbacks, collapsed, bad input: the run ended FAILED by itself; a retry would
    # only repeat it
    assert not _retry_if_crashed(None, None, Failed(data=StageFailed("stage 'train' failed")))
