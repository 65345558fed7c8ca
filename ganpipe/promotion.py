"""The promotion rule: pure, so it is unit-tested without a registry. `registry` applies it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ganpipe.metrics import is_better
from ganpipe.protocol import check_comparable


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(candidate: dict, champion: dict | None, metric: str) -> Decision:
    """Promote the first version; after that only a strictly better `metric` under the same protocol.

    `candidate` and `champion` are evaluation results (scores plus `fingerprint`); results from
    different protocols raise `IncomparableError` instead of being compared.
    """
    value = candidate.get(metric)
    if not isinstance(value, float) or not math.isfinite(value):
        return Decision(False, f"candidate has no finite {metric} ({value!r})")
    if champion is None:
        return Decision(True, f"first version ({metric}={value:.6g})")
    check_comparable(candidate, champion, "the candidate and the champion")
    best = champion[metric]
    if is_better(metric, value, best):
        return Decision(True, f"{metric} {value:.6g} beats champion's {best:.6g}")
    return Decision(False, f"{metric} {value:.6g} does not beat champion's {best:.6g}")
