"""Evaluation protocols: what must match for two scores to be comparable, and the guard that refuses.

FID is biased at small N and depends on the reference set, the Inception implementation and the
resizer; scores from different protocols are not comparable (mimicry#35, stylegan2-ada#100). Every
result carries its protocol and a short fingerprint of it.
"""

from __future__ import annotations

from ganpipe.core.errors import GanpipeError
from ganpipe.core.hashing import json_sha256
from ganpipe.core.params import EvalParams


class IncomparableError(GanpipeError):
    """Two results were scored under different protocols."""


def protocol(p: EvalParams, ref_key: dict) -> dict:
    """The protocol of an evaluation with params `p` against reference statistics keyed `ref_key`.

    Metric options are included (they change values); the metric list and bootstrap settings are not
    (adding a metric or an interval does not change the other scores).
    """
    return {
        "num_fake": p.num_fake,
        "seed": p.seed,
        "kid_subset_size": p.kid_subset_size,
        "kid_subsets": p.kid_subsets,
        "is_splits": p.is_splits,
        "pr_k": p.pr_k,
        "dc_k": p.dc_k,
        "memorization_quantile": p.memorization_quantile,
        "ref_data_sha256": ref_key["data_sha256"],
        "ref_split": ref_key["split"],
        "num_real": ref_key["num_real"],
        "extractor": ref_key["extractor"],
        "weights_sha256": ref_key["weights_sha256"],
        "resize": ref_key["resize"],
    }


def fingerprint(proto: dict) -> str:
    return json_sha256(proto)[:16]


def differences(a: dict, b: dict) -> dict[str, tuple]:
    """Protocol fields whose values differ: {field: (a's, b's)}."""
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_comparable(a: dict, b: dict, what: str = "these results") -> None:
    """Raise IncomparableError unless results `a` and `b` (each with `fingerprint`, optionally
    `protocol`) were scored under the same protocol."""
    if a.get("fingerprint") and a.get("fingerprint") == b.get("fingerprint"):
        return
    diff = differences(a.get("protocol") or {}, b.get("protocol") or {})
    detail = (
        ", ".join(f"{k}: {x!r} vs {y!r}" for k, (x, y) in list(diff.items())[:4])
        or f"fingerprint {a.get('fingerprint')!r} vs {b.get('fingerprint')!r}"
    )
    raise IncomparableError(
        f"refusing to compare {what}: scored under different protocols ({detail}); "
        "re-score both under one protocol (`ganpipe evaluate --model ...`)"
    )
