"""Metric invariants and agreement with the peer implementations, not magic numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganpipe.errors import ConfigError
from ganpipe.metrics import (
    METRICS,
    FeatureSet,
    compute,
    feature_stats,
    frechet_distance,
    get_metric,
    is_better,
    kernel_inception_distance,
)


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_equals_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_equals_closed_form_for_commuting_covariances():
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T: tr((S1 S2)^1/2) = sum sqrt(a b)
    rng = np.random.default_rng(1)
    d = 12
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.2, 2, d), rng.uniform(0.2, 2, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu = rng.normal(size=d)
    expected = a.sum() + b.sum() - 2 * np.sqrt(a * b).sum()
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_self_is_zero_and_symmetric():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(300, 20)), rng.normal(0.3, 1.2, size=(300, 20))
    mx, sx = feature_stats(x)
    my, sy = feature_stats(y)
    assert frechet_distance(mx, sx, mx, sx) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mx, sx, my, sy) == pytest.approx(frechet_distance(my, sy, mx, sx), rel=1e-9)
    assert frechet_distance(mx, sx, my, sy) > 0.5


def test_frechet_handles_rank_deficient_covariances():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(10, 64)), rng.normal(size=(10, 64))  # N < D: singular covariances
    with pytest.warns(UserWarning, match="rank-deficient"):
        fx, fy = FeatureSet.from_features(x), FeatureSet.from_features(y)
    value = frechet_distance(fx.mu, fx.sigma, fy.mu, fy.sigma)
    assert np.isfinite(value) and value > 0 and isinstance(value, float)


def test_frechet_agrees_with_torchmetrics():
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(4)
    d = 32
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    theirs = _compute_fid(*(torch.tensor(v, dtype=torch.float64) for v in (mu1, s1, mu2, s2))).item()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(theirs, rel=1e-6)


def test_kid_agrees_with_torchmetrics_on_full_sets():
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(80, 24)), rng.normal(0.2, 1.0, size=(80, 24))
    mean, std = kernel_inception_distance(x, y, subset_size=80, subsets=3)
    theirs = poly_mmd(torch.tensor(x), torch.tensor(y), degree=3, gamma=None, coef=1.0).item()
    assert mean == pytest.approx(theirs, rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)  # full-size subsets are permutations: same value


def test_kid_is_near_zero_for_same_distribution_and_grows_with_shift():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same, _ = kernel_inception_distance(x, y, 100, 50)
    shifted, _ = kernel_inception_distance(x, y + 0.5, 100, 50)
    assert abs(same) < 0.02 < shifted


def test_registry_direction_and_unknown_names():
    assert set(METRICS) >= {"fid", "kid"}
    assert is_better("fid", 1.0, 2.0) and not is_better("fid", 2.0, 1.0) and not is_better("kid", 1.0, 1.0)
    with pytest.raises(ConfigError, match="valid: fid, kid"):
        get_metric("isc")


def test_compute_shares_features_across_metrics():
    rng = np.random.default_rng(7)
    real, fake = FeatureSet.from_features(rng.normal(size=(60, 8))), FeatureSet.from_features(rng.normal(size=(60, 8)))
    out = compute(["fid", "kid"], real, fake, kid_subset_size=30, kid_subsets=4, seed=0)
    assert set(out) == {"fid", "kid", "kid_std"}
    assert out["fid"] == frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)
