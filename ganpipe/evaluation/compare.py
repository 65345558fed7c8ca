"""Compare two evaluation results, refusing when their protocols differ (`ganpipe.registry.scoring`
loads a result from a file, a registered version or a run)."""

from __future__ import annotations

from ganpipe.core.metric_keys import DIRECTIONS, is_better
from ganpipe.evaluation.protocol import check_comparable


def compare(a: dict, b: dict) -> list[dict]:
    """Rows (key, a, b, b - a, better) for every directed metric both results hold."""
    check_comparable(a, b, "the two results")
    rows = []
    for key, higher in DIRECTIONS.items():
        va, vb = a.get(key), b.get(key)
        if isinstance(va, float) and isinstance(vb, float):
            better = "b" if is_better(key, vb, va) else "a" if is_better(key, va, vb) else "tie"
            rows.append(
                {
                    "metric": key,
                    "a": va,
                    "b": vb,
                    "diff": vb - va,
                    "better": better,
                    "higher_is_better": higher,
                    "a_ci": (a.get(f"{key}_ci_low"), a.get(f"{key}_ci_high")),
                    "b_ci": (b.get(f"{key}_ci_low"), b.get(f"{key}_ci_high")),
                }
            )
    return rows
