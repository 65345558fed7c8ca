"""k-nearest-neighbour metrics on feature manifolds: precision/recall, density/coverage, memorisation.

Radii follow torch-fidelity: the k-th nearest neighbour within the same set, the point itself excluded,
and a point is inside a ball when its distance is <= the radius.
"""

from __future__ import annotations

import numpy as np


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances [len(a), len(b)] in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d2 = np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :] - 2 * a @ b.T
    return np.sqrt(np.clip(d2, 0, None))


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest other point of the same set."""
    if len(x) <= k:
        raise ValueError(f"k-NN radii need more than k={k} points, got {len(x)}")
    d = pairwise_distances(x, x)
    return np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself (distance 0)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019)."""
    d = pairwise_distances(real, fake)  # [real, fake]
    precision = (d <= knn_radii(real, k)[:, None]).any(axis=0).mean()
    recall = (d <= knn_radii(fake, k)[None, :]).any(axis=1).mean()
    return {"precision": float(precision), "recall": float(recall)}


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020): balls around real samples only."""
    d = pairwise_distances(real, fake)
    inside = d <= knn_radii(real, k)[:, None]
    return {"density": float(inside.sum() / (k * d.shape[1])), "coverage": float(inside.any(axis=1).mean())}


def memorization(train: np.ndarray, fake: np.ndarray, quantile: float) -> dict[str, float]:
    """Share of generated samples closer to their nearest training sample than the `quantile` of the
    training set's own nearest-neighbour distances. A model that does not copy scores about `quantile`;
    one that copies training images scores near 1."""
    threshold = float(np.quantile(knn_radii(train, 1), quantile))
    nearest = pairwise_distances(fake, train).min(axis=1)
    return {"memorization": float((nearest < threshold).mean()), "memorization_threshold": threshold}
