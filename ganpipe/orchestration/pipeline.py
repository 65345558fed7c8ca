"""The `training-pipeline` flow: one task per DVC stage, in order, then the registration result.

Each task runs `dvc repro --single-item <stage>`, so DVC decides what is stale and a flow run leaves
exactly the `dvc.lock` that `dvc repro` leaves. After `prepare`, the prepared data is pushed to the DVC
remote (`dvc pull` restores it elsewhere). When DVC reports nothing stale, the run ends at once as
"Skipped" (a nightly run on unchanged data costs seconds); `force=True` retrains anyway. Each run
publishes its summary as a Prefect artifact and as the MLflow run's description.

Failure: the training task holds a global concurrency slot per host and device (one training at a time
there); when its process dies (an OOM kill, a preemption) the abandoned MLflow run is marked FAILED and
the task is retried `schedule.train_retries` times, each retry resuming from the newest snapshot. DVC
push and registration retry with exponential backoff. A failed or crashed flow run is logged and
POSTed to `schedule.webhook_url` when set. Prefect owns time and failure; DVC owns lineage.
"""

from __future__ import annotations

import json
import socket
import time
from contextlib import contextmanager

from prefect import flow, task
from prefect.artifacts import create_image_artifact, create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run, task_run
from prefect.states import Completed
from prefect.tasks import exponential_backoff

from ganpipe.core import tracking
from ganpipe.core.device import resolve_device
from ganpipe.core.dvc import DvcFailed, check_dvc, dvc, push, stage_env
from ganpipe.core.io import read_json
from ganpipe.core.leases import ensure_limit
from ganpipe.core.params import load_params
from ganpipe.core.paths import layout
from ganpipe.orchestration import journal, slots
from ganpipe.orchestration.notify import notify_hook
from ganpipe.orchestration.report import png_data_uri, registration_markdown, skipped_markdown

STAGES = ("prepare", "ref-stats", "train", "evaluate", "register")
FORCED = ("train", "evaluate", "register")  # what `force` re-runs on unchanged inputs


class StageFailed(DvcFailed):
    """A DVC stage exited non-zero; its own output above says why."""


class TrainingCrashed(StageFailed):
    """The training process died without ending its MLflow run (killed, out of memory, preempted), or
    a multi-process training lost one of its processes (another machine died): worth a retry, which
    resumes. A training that failed on its own (diverged, collapsed, bad input) ended its run FAILED and
    is not retried."""


def _retry_if_crashed(task, task_run, state) -> bool:
    return isinstance(state.data, TrainingCrashed)


@task(name="dvc-status", cache_policy=NO_CACHE)
def stale_stages(project_dir: str) -> list[str]:
    """The stages whose code, data, params or outputs differ from dvc.lock (`dvc status`)."""
    status = json.loads(check_dvc(["status", "--json"], project_dir).stdout or "{}")
    return [s for s in STAGES if s in status]


def _repro(stage: str, project_dir: str, force: bool, env: dict[str, str] | None = None) -> None:
    rc = dvc(
        ["repro", "--single-item", stage, *(["--force"] if force else [])], project_dir, env, capture=False
    ).returncode
    if rc != 0:
        raise StageFailed(f"stage {stage!r} failed (`dvc repro --single-item {stage}` exited {rc})")


# DVC owns skipping of unchanged stages; Prefect must not cache on top of it.
@task(name="dvc-repro", cache_policy=NO_CACHE, task_run_name="{stage}")
def reproduce(stage: str, project_dir: str, force: bool = False) -> None:
    """Reproduce one DVC stage (a no-op when its deps, params and outs are unchanged, unless forced)."""
    _repro(stage, project_dir, force)


def training_slot_name(device: str) -> str:
    """The global concurrency limit that lets one training at a time use this host's device."""
    return f"ganpipe-train-{socket.gethostname()}-{resolve_device(device)}".replace(":", "-")


MIN_LEASE_S = 300  # Prefect's default lease; renewed every 75 % of it, so a shorter one survives shorter server outages


def holding_slot(slot: str, lease_s: int):
    """Hold the device's training slot (ganpipe/orchestration/slots.py: a dead holder's slot is freed
    before waiting, and a waiting run says who holds it). The lease is renewed while this process lives;
    when the machine dies the server frees it after `lease_s` (schedule.crashed_after_s, the silence
    after which the watchdog marks the run Crashed), but never sooner than Prefect's default 300 s: a
    shorter lease would be lost during a brief outage of the Prefect server, and a second training could
    then take a device that is still busy. A hiccup renewing the lease must not kill hours of training."""
    return slots.holding(slot, max(MIN_LEASE_S, lease_s))


@task(name="train", cache_policy=NO_CACHE, retry_condition_fn=_retry_if_crashed)
def train_stage(project_dir: str, force: bool, slot: str, lease_s: int) -> None:
    """`dvc repro --single-item train` holding the device's training slot. A retry (after the training
    process died) resumes from the newest snapshot in the same MLflow run; the dead attempt's MLflow run
    is marked FAILED first, so a crash never leaves it "running". Without `force`, a snapshot that an
    earlier, dead flow run left is resumed when its params, data and code match (`ganpipe train`)."""
    from ganpipe.training.snapshots import FRESH_ENV, RESUME_ENV, abandoned_run_id, work_dir_of  # imports torch

    resume = task_run.run_count > 1
    # a retry resumes its own dead attempt; a forced run starts over (not from a dead run's snapshot)
    env = {**stage_env(), **({RESUME_ENV: "1"} if resume else {FRESH_ENV: "1"} if force else {})}
    if resume:
        print("retry: training resumes from its newest snapshot")
    with holding_slot(slot, lease_s):
        try:
            _repro("train", project_dir, force, env)
        except StageFailed as exc:
            run_id = abandoned_run_id(work_dir_of(layout(project_dir).models_dir))
            if run_id:
                tracking.configure(project_dir)
                if tracking.crashed(run_id, f"{exc}; the process died or was killed"):
                    raise TrainingCrashed(
                        f"{exc}; the training process died or lost a process of its job (MLflow run {run_id} "
                        "FAILED); a retry resumes from the newest snapshot"
                    ) from None
            raise


@task(name="register", cache_policy=NO_CACHE)
def register_stage(project_dir: str, force: bool) -> None:
    """The registration stage (the gate, then the alias move); retried with backoff when the registry
    is unreachable (the stage takes the registry lock, so a retry cannot register twice at once)."""
    _repro("register", project_dir, force)


@task(name="dvc-push", cache_policy=NO_CACHE)
def push_data(project_dir: str) -> str:
    """Push the prepared data to the project's default DVC remote, so `dvc pull` restores it elsewhere."""
    remote = push(project_dir, ["prepare"])
    print(f"prepared data pushed to DVC remote {remote!r}")
    return remote


@task(name="report", cache_policy=NO_CACHE)
def publish(markdown: str, run_id: str, project_dir: str) -> None:
    """The summary as a Prefect artifact and as the MLflow run's description."""
    create_markdown_artifact(markdown=markdown, key="training-pipeline", description="candidate vs champion")
    if run_id:
        tracking.configure(project_dir)
        tracking.describe_run(run_id, markdown, flow_run.id)


@task(name="plots", cache_policy=NO_CACHE)
def publish_plots(project_dir: str) -> str:
    """The best snapshot's sample grid as an image artifact, and `dvc plots show` of the training curves
    (quick KID, diversity, losses by kimg) as a link artifact; returns the plots page."""
    lay = layout(project_dir)
    create_image_artifact(
        image_url=png_data_uri(lay.models_dir / "samples.png"),
        key="samples",
        description="fixed-noise grid of the trained EMA generator (best snapshot)",
    )
    out = lay.root / "reports" / "plots"
    check_dvc(["plots", "show", "-o", str(out)], project_dir)
    page = (out / "index.html").as_uri()
    create_link_artifact(
        link=page,
        link_text="training curves (dvc plots show)",
        key="training-curves",
        description="quick KID, diversity and losses by kimg; `dvc plots diff` compares runs",
    )
    return page


class StageClock:
    """Wall seconds per stage of one flow run, in the order run (`ganpipe run` prints them at the end)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t


def retry_options(retries: int) -> dict:
    """Task options for I/O that may fail for a while (a remote, the registry): exponential backoff."""
    return {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=5) if retries else 0,
        "retry_jitter_factor": 0.2 if retries else None,
    }


@flow(name="training-pipeline", log_prints=True, on_failure=[notify_hook], on_crashed=[notify_hook])
def training_pipeline(project_dir: str = ".", force: bool = False):
    """Prepare, compute reference stats, train, evaluate, register; returns the registration result
    (with "skipped": True and the standing champion when nothing changed and not `force`)."""
    clock = StageClock()
    lay = layout(project_dir)
    journal.recover(lay, by="run")  # a sweep that died left a candidate's values: the original first
    params = load_params(lay.params_path)  # fail fast, before any stage runs, on a bad params.yaml
    sp = params.schedule
    io = retry_options(sp.io_retries)
    root = str(lay.root)
    with clock("dvc status"):
        stale = stale_stages(root)
    if not stale and not force:
        previous = read_json(lay.registration_path, "the register stage")
        reason = "nothing changed"
        markdown = skipped_markdown(reason, previous)
        run_id = tracking.log_skipped_run(root, params.base.experiment, reason, markdown)
        publish.with_options(**io)(markdown, "", root)
        print(f"skipped: {reason} since dvc.lock; champion stays v{previous['champion']} (MLflow run {run_id})")
        return Completed(
            message=f"skipped: {reason}",
            name="Skipped",
            data={**previous, "skipped": True, "promoted": False, "reason": reason, **_times(clock)},
        )
    slot = training_slot_name(params.base.device)
    ensure_limit(slot)
    for stage in STAGES:
        with clock(stage):
            if stage == "train":
                train_stage.with_options(retries=sp.train_retries, retry_delay_seconds=5)(
                    root, force, slot, sp.crashed_after_s
                )
            elif stage == "register":
                register_stage.with_options(**io)(root, force)
            else:
                reproduce(stage, root, force and stage in FORCED)
        if stage == "prepare":
            with clock("dvc push"):
                push_data.with_options(**io)(root)
    result = read_json(lay.registration_path, "the register stage")
    run_id = read_json(lay.run_info_path, "the train stage")["mlflow_run_id"]
    with clock("plots + report"):
        page = publish_plots(root)
        markdown = registration_markdown(result, run_id, tracking.tracking_uri(root))
        publish.with_options(**io)(f"{markdown}\n\nTraining curves: [{page}]({page})", run_id, root)
    state = "it is the new champion" if result["promoted"] else f"champion stays v{result['champion']}"
    print(f"registered {result['model_name']} v{result['version']}: {state} ({result['reason']})")
    for c in result.get("checks", []):
        print(f"  [{'pass' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}")
    return {**result, "skipped": False, **_times(clock)}


def _times(clock: StageClock) -> dict:
    return {"stage_seconds": clock.seconds, "flow_started_at": clock.started}
