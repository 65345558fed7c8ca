"""The `sweep` flow: train each candidate of `sweep:` as a DVC experiment, register the best.

Each candidate runs `dvc exp run evaluate -S ...` (prepare, ref-stats, train, evaluate; unchanged stages
come from DVC's run cache), so each has its own lineage in `dvc exp show`. With `sweep.jobs: 1` they run
one after another in the workspace, each holding the device's training slot; with N > 1 they go through
DVC's queue, N at a time in temp directories (`dvc exp run --run-all -j N`), scores read back from
`dvc exp show --json`. The best by `registry.primary_metric` is applied to
the workspace (`dvc exp apply`) and sent through the registration gate (`dvc repro register`); the gate,
not the sweep, decides whether it becomes the champion. A markdown table of all candidates is published
as a Prefect artifact.
"""

from __future__ import annotations

import json
import time

import yaml
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from ganpipe.core import tracking
from ganpipe.core.dvc import DvcFailed, check_dvc, dvc, stage_env
from ganpipe.core.io import read_json
from ganpipe.core.params import load_params
from ganpipe.core.paths import layout
from ganpipe.orchestration import journal
from ganpipe.orchestration.notify import notify_hook
from ganpipe.orchestration.pipeline import (
    ensure_limit,
    holding_slot,
    register_stage,
    retry_options,
    training_slot_name,
)
from ganpipe.orchestration.report import sweep_markdown
from ganpipe.orchestration.sweep import best, candidates, overrides_args, scores_from_exp_show, validate

SCORES = ("fid", "kid", "precision", "recall", "coverage")


def _result(name: str, overrides: dict, metrics: dict | None, run_id: str = "", failed: str = "") -> dict:
    """One candidate's row: its scores (none when it failed) and MLflow run."""
    scores = {k: metrics[k] for k in SCORES if isinstance((metrics or {}).get(k), (int, float))}
    row = {"name": name, "overrides": overrides, "mlflow_run_id": run_id, "scores": scores}
    return {**row, "failed": failed} if failed else row


@task(name="dvc-exp-run", cache_policy=NO_CACHE, task_run_name="{name}")
def run_candidate(project_dir: str, name: str, overrides: dict, slot: str, lease_s: int, base_params: str) -> dict:
    """One candidate as a DVC experiment up to `evaluate`; its scores and MLflow run. params.yaml is
    first put back as it was before the sweep: `dvc exp run -S` leaves its values in the workspace,
    and a candidate must not inherit the previous one's."""
    journal.write_params(layout(project_dir), base_params)
    try:
        with holding_slot(slot, lease_s):
            check_dvc(
                ["exp", "run", "evaluate", "--name", name, *overrides_args(overrides)], project_dir, capture=False
            )
    except DvcFailed as exc:  # a candidate that diverges or collapses is a result, not the sweep's end
        print(f"candidate {name} {overrides} failed: {exc}")
        return _result(name, overrides, None, failed=str(exc))
    lay = layout(project_dir)
    return _result(
        name,
        overrides,
        read_json(lay.metrics_path, "the evaluate stage"),
        read_json(lay.run_info_path, "the train stage")["mlflow_run_id"],
    )


@task(name="dvc-exp-queue", cache_policy=NO_CACHE)
def run_queued(project_dir: str, named: list[tuple[str, dict]], jobs: int, experiment: str) -> list[dict]:
    """All candidates through DVC's queue, `jobs` at a time, each in a temp copy of the repo; their
    MLflow runs go to the project's store. A candidate that fails is reported without scores."""
    lay = layout(project_dir)
    for name, overrides in named:
        check_dvc(["exp", "run", "evaluate", "--queue", "--name", name, *overrides_args(overrides)], project_dir)
    env = {**stage_env(), "MLFLOW_TRACKING_URI": tracking.tracking_uri(lay.root)}
    # create the store and the experiment now: MLflow's first-use schema migration is not safe to run
    # from several processes at once
    tracking.configure(lay.root)
    tracking.experiment_id(experiment, lay.root)
    rc = dvc(["exp", "run", "--run-all", "--jobs", str(jobs)], project_dir, env, capture=False).returncode
    shown = check_dvc(["exp", "show", "--json"], project_dir, env)
    metrics = scores_from_exp_show(
        json.loads(shown.stdout or "[]"), [n for n, _ in named], str(lay.metrics_path.relative_to(lay.root))
    )
    return [
        _result(
            name,
            overrides,
            metrics.get(name),
            failed="" if name in metrics else f"no metrics (dvc exp run --run-all exited {rc})",
        )
        for name, overrides in named
    ]


@task(name="dvc-exp-apply", cache_policy=NO_CACHE)
def apply_experiment(project_dir: str, name: str) -> None:
    check_dvc(["exp", "apply", name], project_dir, capture=False)


@flow(name="sweep", log_prints=True, on_failure=[notify_hook], on_crashed=[notify_hook])
def sweep(project_dir: str = "."):
    """Train every candidate, apply the best (by registry.primary_metric), register it through the gate."""
    lay = layout(project_dir)
    journal.recover(lay, by="sweep")  # a sweep that died left a candidate's values: the original first
    params = load_params(lay.params_path)
    found = candidates(params.sweep)
    validate(yaml.safe_load(lay.params_path.read_text()), found)  # every candidate, before any training
    root = str(lay.root)
    slot = training_slot_name(params.base.device)
    ensure_limit(slot)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    print(f"sweep of {len(found)} candidates: " + "; ".join(str(c) for c in found))
    base_params = journal.begin(lay)  # until the winner is applied, a dead sweep's next run restores this
    try:
        named = [(f"sweep-{stamp}-{i + 1}", c) for i, c in enumerate(found)]
        if params.sweep.jobs > 1:
            results = run_queued(root, named, params.sweep.jobs, params.base.experiment)
        else:
            results = [
                run_candidate(root, name, c, slot, params.schedule.crashed_after_s, base_params) for name, c in named
            ]
        metric = params.registry.primary_metric
        winner = best(results, metric)
    except BaseException:
        journal.write_params(lay, base_params)  # never leave a candidate's values for the next nightly run
        journal.end(lay)
        raise
    print(f"best by {metric}: {winner['name']} {winner['overrides']} ({metric} = {winner['scores'][metric]:.4g})")
    apply_experiment(root, winner["name"])
    journal.end(lay)  # the winner's values are in params.yaml on purpose now
    winner["mlflow_run_id"] = read_json(lay.run_info_path, "the train stage")["mlflow_run_id"]
    register_stage.with_options(**retry_options(params.schedule.io_retries))(root, False)
    registration = read_json(lay.registration_path, "the register stage")
    create_markdown_artifact(
        markdown=sweep_markdown(results, winner, metric, registration),
        key="sweep",
        description="sweep candidates and the registered winner",
    )
    return {"winner": winner, "candidates": results, "registration": registration}
