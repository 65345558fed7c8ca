"""Inception Score (Salimans et al. 2016) from classifier logits, as torch-fidelity computes it."""

from __future__ import annotations

import numpy as np


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def inception_score(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """Mean and std over `splits` consecutive chunks of exp(E[KL(p(y|x) || p(y))]), in float64."""
    logits = np.asarray(logits, np.float64)
    n = len(logits)
    if n < splits:
        raise ValueError(f"Inception Score needs at least {splits} samples for {splits} splits, got {n}")
    log_p = _log_softmax(logits)
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(axis=0, keepdims=True)
        kl = (p[lo:hi] * (log_p[lo:hi] - np.log(q))).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))
