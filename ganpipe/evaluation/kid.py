"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel.

Unbiased at any N (FID is not), so it is the default primary metric for promotion.
"""

from __future__ import annotations

import numpy as np


def poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, the kernel torch-fidelity and torchmetrics use."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m, n = len(kxx), len(kyy)
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2 * kxy.mean())


FULL_KERNEL_MAX = 4096  # up to this many samples per set, kernel matrices are computed once


def kernel_inception_distance(
    real: np.ndarray, fake: np.ndarray, subset_size: int, subsets: int, seed: int = 0
) -> tuple[float, float]:
    """KID mean and std over random subsets of `subset_size` (as torch-fidelity computes it).

    For sets up to FULL_KERNEL_MAX samples the kernel matrices are computed once and each subset
    reads its block, instead of recomputing kernels per subset.
    """
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    m = min(subset_size, len(real), len(fake))
    rng = np.random.default_rng(seed)
    full = max(len(real), len(fake)) <= FULL_KERNEL_MAX
    if full:
        kxx, kyy, kxy = poly_kernel(real, real), poly_kernel(fake, fake), poly_kernel(real, fake)
    values = np.empty(subsets)
    for i in range(subsets):
        a = rng.choice(len(real), m, replace=False)
        b = rng.choice(len(fake), m, replace=False)
        if full:
            values[i] = mmd2_unbiased(kxx[np.ix_(a, a)], kyy[np.ix_(b, b)], kxy[np.ix_(a, b)])
        else:
            x, y = real[a], fake[b]
            values[i] = mmd2_unbiased(poly_kernel(x, x), poly_kernel(y, y), poly_kernel(x, y))
    return float(values.mean()), float(values.std())


def bootstrap_kid(real: np.ndarray, fake: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """Full-set unbiased MMD^2 for resamples of the generated features (real set fixed).

    Kernel matrices are computed once; a resample is a weight vector w (how often each sample was
    drawn). Pairs of copies of the same sample are left out, as the unbiased estimator leaves out i = j.
    """
    x, y = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    kxx, kyy, kxy = poly_kernel(x, x), poly_kernel(y, y), poly_kernel(x, y)
    m, n = len(x), len(y)
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    diag = np.diag(kyy)
    col = kxy.sum(axis=0)
    out = np.empty(replicates)
    for b in range(replicates):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        yy = (w @ kyy @ w - (w**2) @ diag) / (n * n - (w**2).sum())
        out[b] = xx + yy - 2 * (col @ w) / (m * n)
    return out


def paired_bootstrap_kid(
    real: np.ndarray, fake_a: np.ndarray, fake_b: np.ndarray, replicates: int, rng: np.random.Generator
) -> tuple[float, np.ndarray]:
    """KID(b) - KID(a) on the full sets, and over `replicates` paired resamples.

    a and b are generated from the same seeds, so sample i of a pairs with sample i of b; each
    resample draws one weight vector for both, which cancels the seed-to-seed noise they share.
    """
    x = np.asarray(real, np.float64)
    ya, yb = np.asarray(fake_a, np.float64), np.asarray(fake_b, np.float64)
    if len(ya) != len(yb):
        raise ValueError(f"paired sets differ in size ({len(ya)} vs {len(yb)})")
    n = len(ya)
    ka, kb = poly_kernel(ya, ya), poly_kernel(yb, yb)
    da, db = np.diag(ka), np.diag(kb)
    ca, cb = poly_kernel(x, ya).sum(axis=0), poly_kernel(x, yb).sum(axis=0)
    m = len(x)

    def diff(w: np.ndarray) -> float:
        pairs = n * n - (w**2).sum()
        yy_a = (w @ ka @ w - (w**2) @ da) / pairs
        yy_b = (w @ kb @ w - (w**2) @ db) / pairs
        return float(yy_b - yy_a - 2 * ((cb - ca) @ w) / (m * n))  # the real-real term cancels

    point = diff(np.ones(n))
    reps = np.array(
        [diff(np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)) for _ in range(replicates)]
    )
    return point, reps
