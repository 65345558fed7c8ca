"""Compare two evaluation results, refusing when their protocols differ.

A result is a metrics JSON file (`reports/metrics.json`, `ganpipe evaluate --model ... --out`), a
registered version (`models:/NAME/VERSION` or `models:/NAME@ALIAS`) or a run (`runs:/RUN_ID`).
"""

from __future__ import annotations

from pathlib import Path

from ganpipe.errors import DataError
from ganpipe.io import read_json
from ganpipe.metrics import DIRECTIONS, is_better
from ganpipe.protocol import check_comparable


def load_result(ref: str) -> dict:
    if ref.startswith("models:/"):
        from ganpipe.registry import version_result

        return version_result(ref)
    if ref.startswith("runs:/"):
        from ganpipe.tracking import run_result

        return run_result(ref[len("runs:/"):].strip("/"))
    path = Path(ref)
    if not path.is_file():
        raise DataError(f"{ref}: not a metrics JSON file, models:/ URI or runs:/ URI")
    return read_json(path, "`ganpipe evaluate`")


def compare(a: dict, b: dict) -> list[dict]:
    """Rows (key, a, b, b - a, better) for every directed metric both results hold."""
    check_comparable(a, b, "the two results")
    rows = []
    for key, higher in DIRECTIONS.items():
        va, vb = a.get(key), b.get(key)
        if isinstance(va, float) and isinstance(vb, float):
            better = "b" if is_better(key, vb, va) else "a" if is_better(key, va, vb) else "tie"
            rows.append({"metric": key, "a": va, "b": vb, "diff": vb - va, "better": better,
                         "higher_is_better": higher,
                         "a_ci": (a.get(f"{key}_ci_low"), a.get(f"{key}_ci_high")),
                         "b_ci": (b.get(f"{key}_ci_low"), b.get(f"{key}_ci_high"))})
    return rows
