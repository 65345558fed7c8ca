"""The metric registry: named metrics over shared features, and the one place that says which
direction is better (StyleGAN's `metric_main.py` is the model).

Every metric takes the same `FeatureSet`s of the real and generated images, so each image set goes
through the feature extractor once. Names are what `eval.metrics` selects; each metric reports one or
more keys (`pr` reports `precision` and `recall`), and each key has a direction.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ganpipe.core.errors import ConfigError
from ganpipe.core.metric_keys import METRIC_NAMES, REPORTS
from ganpipe.evaluation.frechet import bootstrap_fid, feature_stats, fid_from_features, paired_bootstrap_fid
from ganpipe.evaluation.inception_score import inception_score
from ganpipe.evaluation.kid import bootstrap_kid, kernel_inception_distance, paired_bootstrap_kid
from ganpipe.evaluation.manifold import density_coverage, memorization, precision_recall


@dataclass(frozen=True)
class FeatureSet:
    """Features (and classifier logits, when the extractor has a head) of one image set."""

    features: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    logits: np.ndarray | None = None

    @classmethod
    def from_features(cls, features: np.ndarray, logits: np.ndarray | None = None) -> FeatureSet:
        features = np.asarray(features)
        if len(features) < features.shape[1]:
            warnings.warn(
                f"{len(features)} samples for {features.shape[1]}-d features: the covariance is "
                "rank-deficient and FID is strongly biased; compare only at equal N",
                stacklevel=2,
            )
        mu, sigma = feature_stats(features)
        return cls(features, mu, sigma, logits)


@dataclass(frozen=True)
class Options:
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    is_splits: int = 10
    pr_k: int = 3
    dc_k: int = 5
    memorization_quantile: float = 0.05
    bootstrap: int = 0  # replicates for FID/KID confidence intervals; 0 = none
    confidence: float = 0.95
    seed: int = 0


class Unavailable(Exception):
    """The metric cannot be computed from these features (reported, never faked)."""


def _interval(estimate: float, values: np.ndarray, confidence: float) -> tuple[float, float]:
    """Bias-corrected percentile interval: resampling with replacement duplicates samples, which
    inflates FID (its bias grows as N shrinks), so the replicates' mean shift is taken out."""
    lo, hi = np.quantile(values, [(1 - confidence) / 2, (1 + confidence) / 2])
    bias = float(values.mean()) - estimate
    return float(lo - bias), float(hi - bias)


def _fid(real: FeatureSet, fake: FeatureSet, o: Options) -> dict[str, float]:
    out = {"fid": fid_from_features(real.mu, real.sigma, fake.features)}
    if o.bootstrap:
        reps = bootstrap_fid(real.mu, real.sigma, fake.features, o.bootstrap, np.random.default_rng(o.seed))
        out["fid_ci_low"], out["fid_ci_high"] = _interval(out["fid"], reps, o.confidence)
    return out


def _kid(real: FeatureSet, fake: FeatureSet, o: Options) -> dict[str, float]:
    mean, std = kernel_inception_distance(real.features, fake.features, o.kid_subset_size, o.kid_subsets, o.seed)
    out = {"kid": mean, "kid_std": std}
    if o.bootstrap:
        reps = bootstrap_kid(real.features, fake.features, o.bootstrap, np.random.default_rng(o.seed))
        out["kid_ci_low"], out["kid_ci_high"] = _interval(mean, reps, o.confidence)
    return out


def _is(real: FeatureSet, fake: FeatureSet, o: Options) -> dict[str, float]:
    if fake.logits is None:
        raise Unavailable("the feature extractor has no classifier head (full Inception weights needed)")
    mean, std = inception_score(fake.logits, o.is_splits)
    return {"is": mean, "is_std": std}


@dataclass(frozen=True)
class Metric:
    fn: Callable[[FeatureSet, FeatureSet, Options], dict[str, float]]
    directions: dict[str, bool]  # reported key -> higher is better (from core.metric_keys)


_FUNCTIONS: dict[str, Callable[[FeatureSet, FeatureSet, Options], dict[str, float]]] = {
    "fid": _fid,
    "kid": _kid,
    "is": _is,
    "pr": lambda r, f, o: precision_recall(r.features, f.features, o.pr_k),
    "dc": lambda r, f, o: density_coverage(r.features, f.features, o.dc_k),
    "memorization": lambda r, f, o: memorization(r.features, f.features, o.memorization_quantile),
}
METRICS: dict[str, Metric] = {name: Metric(_FUNCTIONS[name], REPORTS[name]) for name in METRIC_NAMES}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r} (valid: {', '.join(METRICS)})") from None


def compute(
    names: list[str], real: FeatureSet, fake: FeatureSet, options: Options
) -> tuple[dict[str, float], dict[str, str]]:
    """Run the named metrics on shared features: (every value they report, {name: why unavailable})."""
    scores: dict[str, float] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        try:
            scores.update(get_metric(name).fn(real, fake, options))
        except Unavailable as exc:
            unavailable[name] = str(exc)
    return scores, unavailable


def paired_difference(
    key: str, real: FeatureSet, a: FeatureSet, b: FeatureSet, replicates: int, confidence: float, seed: int
) -> tuple[float, float, float]:
    """(point, low, high): metric `key` of b minus that of a, with a paired-bootstrap interval over
    the generated samples (a and b come from the same seeds). Supports `fid` and `kid`."""
    rng = np.random.default_rng(seed)
    if key == "kid":
        point, reps = paired_bootstrap_kid(real.features, a.features, b.features, replicates, rng)
    elif key == "fid":
        point, reps = paired_bootstrap_fid(real.mu, real.sigma, a.features, b.features, replicates, rng)
    else:
        raise ConfigError(f"a paired bootstrap is defined for fid and kid, not {key!r}")
    return (point, *_interval(point, reps, confidence))
