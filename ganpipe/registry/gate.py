"""The promotion gate: pure, so it is unit-tested without a registry. `registry` applies it.

A challenger takes the alias only when (1) its primary metric is better than the champion's with
confidence: the paired-bootstrap interval on (challenger - champion) clears the margin; (2) each guard
metric (recall, coverage: a lower FID with lower recall is a collapsing model winning) is not worse
beyond the tolerance; (3) its memorisation is under the limit. Scores from different protocols are
refused, never compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ganpipe.core.metric_keys import higher_is_better
from ganpipe.core.params import GateParams
from ganpipe.evaluation.protocol import check_comparable


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    checks: list[Check] = field(default_factory=list)


def _memorization(candidate: dict, g: GateParams) -> Check:
    value = candidate.get("memorization")
    if not isinstance(value, float):
        return Check("memorization", False, "not measured (add `memorization` to eval.metrics)")
    return Check(
        "memorization",
        value <= g.memorization_limit,
        f"{value:.4g} {'<=' if value <= g.memorization_limit else '>'} limit {g.memorization_limit:g}",
    )


def gate(
    candidate: dict, champion: dict | None, primary: str, diff: tuple[float, float, float] | None, g: GateParams
) -> Decision:
    """Decide on `candidate` (an evaluation result) against `champion` (None for the first version).

    `diff` is (point, low, high) of primary(candidate) - primary(champion) from a paired bootstrap.
    """
    value = candidate.get(primary)
    if not isinstance(value, float) or not math.isfinite(value):
        return Decision(False, f"candidate has no finite {primary} ({value!r})")
    checks = [_memorization(candidate, g)]
    if champion is None:
        ok = checks[0].passed
        return Decision(
            ok,
            f"first version ({primary}={value:.6g})"
            if ok
            else f"first version refused: memorization {checks[0].detail}",
            checks,
        )
    check_comparable(candidate, champion, "the candidate and the champion")
    if diff is None:
        raise ValueError("a champion comparison needs the paired-bootstrap interval")
    point, low, high = diff
    if higher_is_better(primary):
        better, bound = low > g.margin, f"lower bound {low:.4g} > {g.margin:g}"
    else:
        better, bound = high < -g.margin, f"upper bound {high:.4g} < {-g.margin:g}"
    checks.insert(
        0,
        Check(f"{primary}_better", better, f"{primary} difference {point:.4g} [{low:.4g}, {high:.4g}]: needs {bound}"),
    )
    for key in g.guard_metrics:
        a, b = candidate.get(key), champion.get(key)
        if not (isinstance(a, float) and isinstance(b, float)):
            checks.append(Check(f"{key}_not_worse", False, f"{key} not measured for both models"))
            continue
        worse_by = (b - a) if higher_is_better(key) else (a - b)
        checks.append(
            Check(
                f"{key}_not_worse",
                worse_by <= g.guard_tolerance,
                f"{key} {a:.4g} vs champion {b:.4g} (worse by {max(worse_by, 0):.4g}, tolerance {g.guard_tolerance:g})",
            )
        )
    failed = [c for c in checks if not c.passed]
    if failed:
        return Decision(False, "; ".join(f"{c.name} failed: {c.detail}" for c in failed), checks)
    return Decision(True, f"{checks[0].detail}; all checks passed", checks)
