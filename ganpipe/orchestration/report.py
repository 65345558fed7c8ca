"""A pipeline run in a few lines of markdown: the candidate against the champion and the gate's verdict.

The same text becomes a Prefect artifact of the flow run and the MLflow run's description, so the UI a
user happens to open says what happened and why.
"""

from __future__ import annotations

import base64
from pathlib import Path

from ganpipe.core.metric_keys import higher_is_better
from ganpipe.core.redact import redact

ORDER = ("kid", "fid", "precision", "recall", "density", "coverage", "memorization", "is")


def registration_markdown(r: dict, run_id: str = "", tracking_uri: str = "") -> str:
    """Markdown for a `register` result (reports/registration.json)."""
    verdict = (
        f"**v{r['version']} is the new {r['alias']}**"
        if r["promoted"]
        else f"**{r['alias']} stays v{r['champion']}**; v{r['version']} is the challenger"
    )
    lines = [f"### {r['model_name']}: {verdict}", "", r["reason"], ""]
    champ = r.get("champion_metrics") or {}
    keys = [k for k in ORDER if k in r["metrics"]]
    if keys:
        lines += ["| metric | candidate | champion | better |", "|---|---:|---:|---|"]
        for k in keys:
            c = champ.get(k)
            better = "higher" if higher_is_better(k) else "lower"
            lines.append(f"| {k} | {r['metrics'][k]:.4g} | {'-' if c is None else f'{c:.4g}'} | {better} |")
        lines.append("")
    if r.get("interval"):
        i = r["interval"]
        lines.append(
            f"{i['metric']} difference (candidate - champion): {i['point']:.4g} "
            f"[{i['low']:.4g}, {i['high']:.4g}] at {i['confidence']:.0%} (paired bootstrap)"
        )
        lines.append("")
    for c in r.get("checks", []):
        lines.append(f"- {'pass' if c['passed'] else 'FAIL'} {c['name']}: {c['detail']}")
    lines += [
        "",
        f"protocol `{r['fingerprint']}`, model `{r['model_uri']}`"
        + (f", MLflow run `{run_id}`" if run_id else "")
        + (f" on `{redact(tracking_uri)}`" if tracking_uri else ""),
    ]
    return "\n".join(lines).strip() + "\n"


def skipped_markdown(reason: str, registration: dict | None) -> str:
    champ = (
        ""
        if not registration
        else f" {registration['model_name']}@{registration['alias']} stays v{registration['champion']}."
    )
    return f"### skipped: {reason}\n\nDVC reports data, params and code unchanged since `dvc.lock`;{champ}\n"


def sweep_markdown(results: list[dict], winner: dict, metric: str, registration: dict) -> str:
    """Markdown for a sweep: every candidate with its overrides and scores, the winner, the gate's verdict."""
    keys = [k for k in ORDER if any(k in r["scores"] for r in results)]
    lines = [
        f"### sweep: {len(results)} candidates, best by {metric}: `{winner['name']}`",
        "",
        "| experiment | overrides | " + " | ".join(keys) + " | MLflow run |",
        "|---|---|" + "---:|" * len(keys) + "---|",
    ]
    for r in results:
        mark = " (best)" if r is winner else ""
        overrides = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
        scores = " | ".join(f"{r['scores'][k]:.4g}" if k in r["scores"] else "-" for k in keys)
        run = r["mlflow_run_id"] or f"failed: {r.get('failed', '')[:120]}"
        lines.append(f"| {r['name']}{mark} | {overrides} | {scores} | {run} |")
    return "\n".join(lines + ["", registration_markdown(registration, winner["mlflow_run_id"])])


def png_data_uri(path: str | Path) -> str:
    """A PNG as a data: URI, so an image artifact shows it without a file server."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def stage_times(seconds: dict[str, float]) -> str:
    """Where a run's time went: one line per stage (in the order run) and the total."""
    width = max(map(len, seconds), default=5)
    lines = [f"  {name:<{width}}  {_duration(s)}" for name, s in seconds.items()]
    return "\n".join(["stage times:", *lines, f"  {'total':<{width}}  {_duration(sum(seconds.values()))}"])


def _duration(s: float) -> str:
    return f"{int(s // 60)} min {s % 60:4.1f} s" if s >= 60 else f"{s:.1f} s"
