"""The `training-pipeline` flow: one task per DVC stage, in order, then the registration result.

Each task runs `dvc repro --single-item <stage>`, so DVC decides what is stale and a flow run leaves
exactly the `dvc.lock` that `dvc repro` leaves. After `prepare`, the prepared data is pushed to the DVC
remote (`dvc pull` restores it elsewhere). Prefect owns time and failure; DVC owns lineage.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ganpipe.errors import GanpipeError
from ganpipe.io import read_json
from ganpipe.params import load_params
from ganpipe.paths import layout
from ganpipe.versioning import push

STAGES = ("prepare", "ref-stats", "train", "evaluate", "register")


class StageFailed(GanpipeError):
    """A DVC stage exited non-zero; its own output above says why."""


def _env() -> dict[str, str]:
    """Stage commands (`ganpipe ...`) resolve to this interpreter's environment."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


# DVC owns skipping of unchanged stages; Prefect must not cache on top of it.
@task(name="dvc-repro", cache_policy=NO_CACHE, task_run_name="{stage}")
def reproduce(stage: str, project_dir: str) -> None:
    """Reproduce one DVC stage (a no-op when its deps, params and outs are unchanged)."""
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    rc = subprocess.run(cmd, cwd=project_dir, env=_env()).returncode
    if rc != 0:
        raise StageFailed(f"stage {stage!r} failed (`dvc repro --single-item {stage}` exited {rc})")


@task(name="dvc-push", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def push_data(project_dir: str) -> str:
    """Push the prepared data to the project's default DVC remote, so `dvc pull` restores it elsewhere."""
    remote = push(project_dir, ["prepare"])
    print(f"prepared data pushed to DVC remote {remote!r}")
    return remote


@flow(name="training-pipeline", log_prints=True)
def training_pipeline(project_dir: str = ".") -> dict:
    """Prepare, compute reference stats, train, evaluate, register; returns the registration result."""
    lay = layout(project_dir)
    load_params(lay.params_path)  # fail fast, before any stage runs, on a bad params.yaml
    for stage in STAGES:
        reproduce(stage, str(lay.root))
        if stage == "prepare":
            push_data(str(lay.root))
    result = read_json(lay.registration_path, "the register stage")
    state = "it is the new champion" if result["promoted"] else f"champion stays v{result['champion']}"
    print(f"registered {result['model_name']} v{result['version']}: {state} ({result['reason']})")
    for c in result.get("checks", []):
        print(f"  [{'pass' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}")
    return result
