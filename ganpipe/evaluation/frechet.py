"""Frechet distance (FID) in float64 from eigenvalues of a symmetric product, never `sqrtm`.

scipy's `sqrtm` returns complex results at small N (pytorch-fid#13) and changed its API (scipy 1.18);
tr((S1 S2)^1/2) equals the sum of square roots of the eigenvalues of S1^1/2 S2 S1^1/2, which is
symmetric PSD, so `eigh`/`eigvalsh` apply and tiny negative eigenvalues from rounding are clamped.
"""

from __future__ import annotations

import numpy as np


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of [N, D] features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix (negative rounding eigenvalues clamped to 0)."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt(eigenvalues: np.ndarray) -> float:
    return float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), float64, clamped at 0."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    r1 = sqrt_psd(s1)
    m = r1 @ s2 @ r1
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * _trace_sqrt(np.linalg.eigvalsh((m + m.T) / 2))
    return float(max(value, 0.0))


class _LowRank:
    """FID against fixed real statistics for (resampled) generated features when N < D.

    The non-zero eigenvalues of S_r^1/2 S_f S_r^1/2 equal those of Yc S_r Yc^T / (N - 1) (N x N, Yc
    the centred samples), so no D x D decomposition is needed, and Y S_r Y^T is computed once: a
    resample costs one N x N eigendecomposition.
    """

    def __init__(self, mu_r: np.ndarray, sigma_r: np.ndarray, fake: np.ndarray):
        self.y = np.asarray(fake, np.float64)
        self.mu_r = np.asarray(mu_r, np.float64)
        self.tr_r = float(np.trace(sigma_r))
        self.g = self.y @ np.asarray(sigma_r, np.float64) @ self.y.T
        self.sq = np.einsum("ij,ij->i", self.y, self.y)

    def fid(self, idx: np.ndarray) -> float:
        y, g, n = self.y, self.g, len(idx)
        w = np.bincount(idx, minlength=len(y)).astype(np.float64)
        m = y.T @ w / n  # sample mean
        u = g[idx] @ w / n  # Yb S_r m
        c = w @ g @ w / n**2  # m^T S_r m
        k = g[np.ix_(idx, idx)] - u[:, None] - u[None, :] + c
        tr_f = (self.sq[idx].sum() - n * (m @ m)) / (n - 1)
        diff = self.mu_r - m
        value = diff @ diff + self.tr_r + tr_f - 2 * _trace_sqrt(np.linalg.eigvalsh((k + k.T) / (2 * (n - 1))))
        return float(max(value, 0.0))


def fid_from_features(mu_r: np.ndarray, sigma_r: np.ndarray, fake: np.ndarray) -> float:
    """FID of generated features against real statistics, by the cheaper of the two exact paths."""
    n, d = np.shape(fake)
    if n > d:
        return frechet_distance(mu_r, sigma_r, *feature_stats(fake))
    return _LowRank(mu_r, sigma_r, fake).fid(np.arange(n))


def bootstrap_fid(
    mu_r: np.ndarray, sigma_r: np.ndarray, fake: np.ndarray, replicates: int, rng: np.random.Generator
) -> np.ndarray:
    """FID of `replicates` resamples (with replacement) of the generated features against fixed real stats."""
    n, d = np.shape(fake)
    if n > d:  # the D x D path is the cheaper one
        y = np.asarray(fake, np.float64)
        return np.array(
            [frechet_distance(mu_r, sigma_r, *feature_stats(y[rng.integers(0, n, n)])) for _ in range(replicates)]
        )
    low = _LowRank(mu_r, sigma_r, fake)
    return np.array([low.fid(rng.integers(0, n, n)) for _ in range(replicates)])


def paired_bootstrap_fid(
    mu_r: np.ndarray,
    sigma_r: np.ndarray,
    fake_a: np.ndarray,
    fake_b: np.ndarray,
    replicates: int,
    rng: np.random.Generator,
) -> tuple[float, np.ndarray]:
    """FID(b) - FID(a) on the full sets, and over `replicates` paired resamples (same indices for both,
    since sample i of a and of b come from the same latent seed)."""
    n = len(fake_a)
    if len(fake_b) != n:
        raise ValueError(f"paired sets differ in size ({n} vs {len(fake_b)})")
    if n > np.shape(fake_a)[1]:
        a, b = np.asarray(fake_a, np.float64), np.asarray(fake_b, np.float64)

        def fid(y, idx):
            return frechet_distance(mu_r, sigma_r, *feature_stats(y[idx]))

        diff = lambda idx: fid(b, idx) - fid(a, idx)  # noqa: E731
    else:
        la, lb = _LowRank(mu_r, sigma_r, fake_a), _LowRank(mu_r, sigma_r, fake_b)
        diff = lambda idx: lb.fid(idx) - la.fid(idx)  # noqa: E731
    point = diff(np.arange(n))
    return point, np.array([diff(rng.integers(0, n, n)) for _ in range(replicates)])
