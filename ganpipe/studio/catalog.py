"""What the studio shows about the registry and the tracking store, as plain dicts (the JSON of `/api/`):
the registered versions with their scores, intervals, protocol and gate verdict; a comparison of several
versions that never puts scores of different protocols side by side; the alias timeline; training runs
with their curves and snapshot grids.

Read-only: promote and rollback go through `ganpipe.registry.aliases`, like the CLI.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ganpipe.core.errors import RegistryError
from ganpipe.core.metric_keys import DIRECTIONS, is_better
from ganpipe.core.tracking import FLOW_RUN_TAG
from ganpipe.registry.aliases import history
from ganpipe.registry.refs import stored_result

CURVE_KEYS = ("quick_kid", "diversity", "duplicate_rate", "loss_G", "loss_D")  # what training logs by nimg
SNAPSHOT_KEY = "samples"  # mlflow.log_image(key=...) of each snapshot's grid
IMAGES_DIR = "images"  # where MLflow keeps images logged with a key and step


class NotFound(RegistryError):
    """An unknown version, alias or run (HTTP 404)."""


def _when(ms) -> str:
    return "" if not ms else datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _scores(tags: dict, prefix: str) -> dict[str, float]:
    """The scores recorded as version tags `<prefix><key>` (registration writes them)."""
    return {k: v for k, v in stored_result(tags, prefix, "").items() if k != "fingerprint"}


def describe(mv, aliases: list[str], primary: str) -> dict:
    """One registered version: lineage, scores (own and re-scored under other protocols), gate verdict."""
    t = mv.tags
    rescored: dict[str, dict[str, float]] = {}
    for k in t:
        if k.startswith("rescore."):
            fp = k.split(".")[1]
            rescored.setdefault(fp, _scores(t, f"rescore.{fp}."))
    checks = [
        {"name": k[len("gate.check.") :], "passed": v.startswith("pass"), "detail": v.partition(": ")[2]}
        for k, v in sorted(t.items())
        if k.startswith("gate.check.")
    ]
    return {
        "version": str(mv.version),
        "aliases": sorted(aliases),
        "created": _when(mv.creation_timestamp),
        "run_id": mv.run_id or t.get("mlflow_run_id", ""),
        "fingerprint": t.get("eval.fingerprint", ""),
        "scores": _scores(t, "metric."),
        "rescored": rescored,
        "primary": primary,
        "gate": {
            "decision": t.get("gate.decision", ""),
            "reason": t.get("gate.reason", ""),
            "checks": checks,
            "difference": t.get(f"gate.{primary}_diff", ""),
        },
        "lineage": {k: t.get(k, "") for k in ("data_sha256", "params_hash", "git_commit", "weights_sha256")},
    }


def versions(client: MlflowClient, name: str, primary: str) -> list[dict]:
    """Every registered version of `name`, newest first ([] when nothing is registered yet)."""
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return []
    by_version: dict[str, list[str]] = {}
    for alias, v in model.aliases.items():
        by_version.setdefault(str(v), []).append(alias)
    found = client.search_model_versions(f"name = '{name}'")
    return [
        describe(mv, by_version.get(str(mv.version), []), primary) for mv in sorted(found, key=_number, reverse=True)
    ]


def _number(mv) -> int:
    return int(mv.version)


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """alias -> version."""
    try:
        return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    except MlflowException:
        return {}


def comparison(described: list[dict]) -> dict:
    """Rows of scores for versions (oldest first) under one protocol: the latest version's. A version scored
    under another protocol is compared only through a re-score under that protocol (registration re-scores
    the champion); otherwise it is listed as not comparable and has no numbers in the rows."""
    cols = sorted(described, key=lambda d: int(d["version"]))
    fp = cols[-1]["fingerprint"]
    columns = []
    for d in cols:
        if d["fingerprint"] == fp:
            columns.append({"version": d["version"], "comparable": True, "scores_from": "its evaluation"})
        elif fp in d["rescored"]:
            columns.append({"version": d["version"], "comparable": True, "scores_from": "re-scored at registration"})
        else:
            columns.append(
                {
                    "version": d["version"],
                    "comparable": False,
                    "scores_from": f"protocol {d['fingerprint'] or 'unknown'}: not comparable with {fp or 'unknown'}",
                }
            )
    scores = [
        (d["scores"] if d["fingerprint"] == fp else d["rescored"].get(fp, {})) if c["comparable"] else {}
        for d, c in zip(cols, columns)
    ]
    rows = []
    for key, higher in DIRECTIONS.items():
        values = [s.get(key) for s in scores]
        if sum(v is not None for v in values) < 1:
            continue
        present = [v for v in values if v is not None]
        best = present[0]
        for v in present[1:]:
            best = v if is_better(key, v, best) else best
        unique = present.count(best) == 1  # a tie marks no version best
        rows.append(
            {
                "metric": key,
                "higher_is_better": higher,
                "values": values,
                "intervals": [[s.get(f"{key}_ci_low"), s.get(f"{key}_ci_high")] for s in scores],
                "best": [unique and len(present) > 1 and v == best for v in values],
            }
        )
    return {
        "fingerprint": fp,
        "columns": columns,
        "rows": rows,
        "gate": {"version": cols[-1]["version"], **cols[-1]["gate"]},
    }


def timeline(client: MlflowClient, name: str, described: list[dict]) -> list[dict]:
    """Every alias move, newest first, with the gate's verdict on the version it moved to."""
    verdict = {d["version"]: d["gate"] for d in described}
    try:
        moves = history(client, name)
    except RegistryError:
        return []
    return [{**m, "gate": verdict.get(str(m["to"]), {})} for m in reversed(moves)]


def runs(client: MlflowClient, experiment: str, limit: int = 50) -> list[dict]:
    """The experiment's training runs, newest first."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    found = client.search_runs(
        [exp.experiment_id],
        "tags.`ganpipe.stage` = 'train'",
        max_results=limit,
        order_by=["attributes.start_time DESC"],
    )
    return [
        {
            "run_id": r.info.run_id,
            "name": r.info.run_name,
            "status": r.info.status,
            "started": _when(r.info.start_time),
            "quick_kid": r.data.metrics.get("quick_kid"),
            "fid": r.data.metrics.get("fid"),
        }
        for r in found
    ]


def run_in(client: MlflowClient, run_id: str, experiment: str):
    """The run, when it is one of the project's experiment (NotFound otherwise: the studio shows no other)."""
    exp = client.get_experiment_by_name(experiment)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise NotFound(f"run {run_id!r} not found") from None
    if exp is None or run.info.experiment_id != exp.experiment_id:
        raise NotFound(f"run {run_id!r} is not a run of experiment {experiment!r}")
    return run


def snapshots(client: MlflowClient, run_id: str) -> list[dict]:
    """The snapshot grids MLflow stored for the run (`images/samples+step+<nimg>+...png`; `%` in MLflow
    before 3.9), in order."""
    out = []
    try:
        files = client.list_artifacts(run_id, IMAGES_DIR)
    except (MlflowException, OSError):
        return []
    for f in files:
        base = f.path.rsplit("/", 1)[-1]
        parts = re.split(r"[+%]", base)
        if f.is_dir or not base.endswith(".png") or len(parts) < 3 or parts[0] != SNAPSHOT_KEY or parts[1] != "step":
            continue
        try:
            nimg = int(parts[2])
        except ValueError:
            continue
        out.append({"kimg": nimg / 1000, "path": f.path})
    return sorted(out, key=lambda s: s["kimg"])


def run_detail(client: MlflowClient, run_id: str, experiment: str) -> dict:
    """A training run: its curves by kimg, its snapshot grids in order, its params and final scores."""
    run = run_in(client, run_id, experiment)
    curves = {}
    for key in CURVE_KEYS:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        if points:
            curves[key] = {"kimg": [m.step / 1000 for m in points], "value": [m.value for m in points]}
    return {
        "run_id": run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "experiment_id": run.info.experiment_id,
        "started": _when(run.info.start_time),
        "curves": curves,
        "snapshots": snapshots(client, run_id),
        "metrics": {
            k: v for k, v in run.data.metrics.items() if k in DIRECTIONS or k.endswith(("_ci_low", "_ci_high"))
        },
        "params": dict(sorted(run.data.params.items())),
        "flow_run_id": run.data.tags.get(FLOW_RUN_TAG, ""),
    }
