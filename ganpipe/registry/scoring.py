"""Scores of any model reference under the current protocol, and evaluation results stored with a
file, a registered version or a run (for `ganpipe evaluate --model` and `ganpipe compare`).

A result is a metrics JSON file (`reports/metrics.json`, `ganpipe evaluate --model ... --out`), a
registered version (`models:/NAME/VERSION` or `models:/NAME@ALIAS`) or a run (`runs:/RUN_ID`).
"""

from __future__ import annotations

from pathlib import Path

from ganpipe.core import tracking
from ganpipe.core.device import resolve_device
from ganpipe.core.errors import DataError
from ganpipe.core.io import read_json, write_json
from ganpipe.core.params import EvalParams
from ganpipe.core.tracking import run_result
from ganpipe.evaluation.evaluate import score_generator
from ganpipe.evaluation.features import build_extractor
from ganpipe.evaluation.refstats import load_ref_stats
from ganpipe.registry.refs import Scope, check_scope, load_generator, version_result


def evaluate_model(
    p: EvalParams,
    model: str,
    ref_stats_path: str | Path,
    out_path: str | Path | None = None,
    root: str | Path = ".",
    allow_foreign: bool = False,
) -> dict:
    """Score any model (`models:/...`, `runs:/...` or a checkpoint path) under the current protocol;
    write the result to `out_path` when given. Nothing is logged: the pipeline's own run is not touched."""
    tracking.configure(root)
    device = resolve_device()
    G = load_generator(model, Scope.project(root, allow_foreign), device)
    result = score_generator(G, build_extractor(p, device), load_ref_stats(ref_stats_path), p)
    if out_path:
        write_json(out_path, result)
    return result


def load_result(ref: str, scope: Scope) -> dict:
    """The evaluation result of a metrics file, a registered version or a run within `scope`."""
    check_scope(ref, scope)
    if ref.startswith("models:/"):
        return version_result(ref)
    if ref.startswith("runs:/"):
        return run_result(ref[len("runs:/") :].strip("/"))
    path = Path(ref)
    if not path.is_file():
        raise DataError(f"{ref}: not a metrics JSON file, models:/ URI or runs:/ URI")
    return read_json(path, "`ganpipe evaluate`")
