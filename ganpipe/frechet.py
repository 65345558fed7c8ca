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


def bootstrap_fid(mu_r: np.ndarray, sigma_r: np.ndarray, fake: np.ndarray, replicates: int,
                  rng: np.random.Generator) -> np.ndarray:
    """FID of `replicates` resamples (with replacement) of the generated features against fixed real stats.

    With N generated samples below the feature dimension, the non-zero eigenvalues of
    S_r^1/2 S_f S_r^1/2 equal those of Yc S_r Yc^T / (N - 1) (N x N, Yc the centred resample), and
    Y S_r Y^T is computed once, so each replicate costs an N x N eigendecomposition.
    """
    y = np.asarray(fake, np.float64)
    n, d = y.shape
    out = np.empty(replicates)
    tr_r = np.trace(sigma_r)
    if n > d:  # the D x D path is the cheaper one
        for b in range(replicates):
            mu, sigma = feature_stats(y[rng.integers(0, n, n)])
            out[b] = frechet_distance(mu_r, sigma_r, mu, sigma)
        return out
    g = y @ sigma_r @ y.T
    sq = np.einsum("ij,ij->i", y, y)
    for b in range(replicates):
        idx = rng.integers(0, n, n)
        w = np.bincount(idx, minlength=n).astype(np.float64)
        m = y.T @ w / n                              # resample mean
        u = g[idx] @ w / n                           # Yb S_r m
        c = w @ g @ w / n**2                         # m^T S_r m
        k = g[np.ix_(idx, idx)] - u[:, None] - u[None, :] + c
        tr_f = (sq[idx].sum() - n * (m @ m)) / (n - 1)
        diff = mu_r - m
        value = diff @ diff + tr_r + tr_f - 2 * _trace_sqrt(np.linalg.eigvalsh((k + k.T) / (2 * (n - 1))))
        out[b] = max(value, 0.0)
    return out
