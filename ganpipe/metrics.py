"""Metrics computed from features, and the one place that says which direction is better.

A registry of named metric functions (StyleGAN's `metric_main.py` is the model). Every metric takes
the same features of the real and generated sets, so features are extracted once per image set.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ganpipe.errors import ConfigError


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of [N, D] features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2), in float64 without `sqrtm`.

    tr((S1 S2)^1/2) equals the sum of square roots of the eigenvalues of the symmetric PSD matrix
    S1^1/2 S2 S1^1/2; tiny negative eigenvalues from rounding are clamped to zero.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean, 0.0))


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subset_size: int, subsets: int,
                              seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel, mean and std
    over random subsets (as torch-fidelity and torchmetrics compute it)."""
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    m = min(subset_size, len(real), len(fake))
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        values[i] = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) \
            - 2 * kxy.mean()
    return float(values.mean()), float(values.std())


@dataclass(frozen=True)
class FeatureSet:
    """Features of one image set, with its statistics computed once."""

    features: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def from_features(cls, features: np.ndarray) -> FeatureSet:
        features = np.asarray(features)
        if len(features) < features.shape[1]:
            warnings.warn(f"{len(features)} samples for {features.shape[1]}-d features: the covariance is "
                          "rank-deficient and FID is strongly biased; compare only at equal N", stacklevel=2)
        mu, sigma = feature_stats(features)
        return cls(features, mu, sigma)


@dataclass(frozen=True)
class Metric:
    fn: Callable[..., dict[str, float]]
    higher_is_better: bool


def _fid(real: FeatureSet, fake: FeatureSet, **_) -> dict[str, float]:
    return {"fid": frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)}


def _kid(real: FeatureSet, fake: FeatureSet, kid_subset_size: int, kid_subsets: int, seed: int,
         **_) -> dict[str, float]:
    mean, std = kernel_inception_distance(real.features, fake.features, kid_subset_size, kid_subsets, seed)
    return {"kid": mean, "kid_std": std}


METRICS: dict[str, Metric] = {
    "fid": Metric(_fid, higher_is_better=False),
    "kid": Metric(_kid, higher_is_better=False),
}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r} (valid: {', '.join(sorted(METRICS))})") from None


def compute(names: list[str], real: FeatureSet, fake: FeatureSet, **options) -> dict[str, float]:
    """Run the named metrics on shared features; returns every value they report."""
    out: dict[str, float] = {}
    for name in names:
        out.update(get_metric(name).fn(real, fake, **options))
    return out


def is_better(name: str, a: float, b: float) -> bool:
    """True when score `a` of metric `name` is strictly better than `b`."""
    return a > b if get_metric(name).higher_is_better else a < b
