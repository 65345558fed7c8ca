"""The `training-pipeline` flow: one task per DVC stage, in order, then the registration result.

Each task runs `dvc repro --single-item <stage>`, so DVC decides what is stale and a flow run leaves
exactly the `dvc.lock` that `dvc repro` leaves. After `prepare`, the prepared data is pushed to the DVC
remote (`dvc pull` restores it elsewhere). When DVC reports nothing stale, the run ends at once as
"Skipped" (a nightly run on unchanged data costs seconds); `force=True` retrains anyway. Each run
publishes its summary as a Prefect artifact and as the MLflow run's description.
Prefect owns time and failure; DVC owns lineage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from ganpipe import tracking
from ganpipe.errors import GanpipeError
from ganpipe.io import read_json
from ganpipe.params import load_params
from ganpipe.paths import layout
from ganpipe.report import registration_markdown, skipped_markdown
from ganpipe.versioning import push

STAGES = ("prepare", "ref-stats", "train", "evaluate", "register")
FORCED = ("train", "evaluate", "register")  # what `force` re-runs on unchanged inputs


class StageFailed(GanpipeError):
    """A DVC stage exited non-zero; its own output above says why."""


def _env() -> dict[str, str]:
    """Stage commands (`ganpipe ...`) resolve to this interpreter's environment."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@task(name="dvc-status", cache_policy=NO_CACHE)
def stale_stages(project_dir: str) -> list[str]:
    """The stages whose code, data, params or outputs differ from dvc.lock (`dvc status`)."""
    cmd = [sys.executable, "-m", "dvc", "status", "--json"]
    proc = subprocess.run(cmd, cwd=project_dir, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise StageFailed(f"`dvc status` exited {proc.returncode}: {proc.stderr.strip()}")
    status = json.loads(proc.stdout or "{}")
    return [s for s in STAGES if s in status]


# DVC owns skipping of unchanged stages; Prefect must not cache on top of it.
@task(name="dvc-repro", cache_policy=NO_CACHE, task_run_name="{stage}")
def reproduce(stage: str, project_dir: str, force: bool = False) -> None:
    """Reproduce one DVC stage (a no-op when its deps, params and outs are unchanged, unless forced)."""
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage, *(["--force"] if force else [])]
    rc = subprocess.run(cmd, cwd=project_dir, env=_env()).returncode
    if rc != 0:
        raise StageFailed(f"stage {stage!r} failed (`dvc repro --single-item {stage}` exited {rc})")


@task(name="dvc-push", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def push_data(project_dir: str) -> str:
    """Push the prepared data to the project's default DVC remote, so `dvc pull` restores it elsewhere."""
    remote = push(project_dir, ["prepare"])
    print(f"prepared data pushed to DVC remote {remote!r}")
    return remote


@task(name="report", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def publish(markdown: str, run_id: str, project_dir: str) -> None:
    """The summary as a Prefect artifact and as the MLflow run's description."""
    create_markdown_artifact(markdown=markdown, key="training-pipeline", description="candidate vs champion")
    if run_id:
        tracking.configure(project_dir)
        tracking.describe_run(run_id, markdown)


@flow(name="training-pipeline", log_prints=True)
def training_pipeline(project_dir: str = ".", force: bool = False):
    """Prepare, compute reference stats, train, evaluate, register; returns the registration result
    (with "skipped": True and the standing champion when nothing changed and not `force`)."""
    lay = layout(project_dir)
    params = load_params(lay.params_path)  # fail fast, before any stage runs, on a bad params.yaml
    root = str(lay.root)
    if not stale_stages(root) and not force:
        previous = read_json(lay.registration_path, "the register stage")
        reason = "nothing changed"
        markdown = skipped_markdown(reason, previous)
        run_id = tracking.log_skipped_run(root, params.base.experiment, reason, markdown)
        publish(markdown, "", root)
        print(f"skipped: {reason} since dvc.lock; champion stays v{previous['champion']} (MLflow run {run_id})")
        return Completed(message=f"skipped: {reason}", name="Skipped",
                         data={**previous, "skipped": True, "promoted": False, "reason": reason})
    for stage in STAGES:
        reproduce(stage, root, force and stage in FORCED)
        if stage == "prepare":
            push_data(root)
    result = read_json(lay.registration_path, "the register stage")
    run_id = read_json(lay.run_info_path, "the train stage")["mlflow_run_id"]
    publish(registration_markdown(result, run_id, tracking.tracking_uri(root)), run_id, root)
    state = "it is the new champion" if result["promoted"] else f"champion stays v{result['champion']}"
    print(f"registered {result['model_name']} v{result['version']}: {state} ({result['reason']})")
    for c in result.get("checks", []):
        print(f"  [{'pass' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}")
    return {**result, "skipped": False}
