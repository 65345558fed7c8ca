"""Metric invariants, closed forms and agreement with the peer implementations, not magic numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganpipe.core.errors import ConfigError
from ganpipe.core.metric_keys import DIRECTIONS, REPORTS, higher_is_better, is_better
from ganpipe.evaluation.frechet import bootstrap_fid, feature_stats, fid_from_features, frechet_distance
from ganpipe.evaluation.inception_score import inception_score
from ganpipe.evaluation.kid import bootstrap_kid, kernel_inception_distance, poly_kernel
from ganpipe.evaluation.manifold import density_coverage, knn_radii, memorization, precision_recall
from ganpipe.evaluation.metrics import METRICS, FeatureSet, Options, compute, get_metric


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ---- FID -------------------------------------------------------------------------------------------


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


def test_fid_of_samples_converges_to_the_closed_form():
    rng = np.random.default_rng(11)
    d = 4
    x = rng.normal(0.0, 1.0, size=(200_000, d))
    y = rng.normal(0.5, 2.0, size=(200_000, d))
    expected = d * 0.5**2 + d * (1.0 - 2.0) ** 2
    assert frechet_distance(*feature_stats(x), *feature_stats(y)) == pytest.approx(expected, rel=0.02)


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


@pytest.mark.parametrize("n,d", [(40, 64), (90, 16)])  # the N x N path (N < D) and the D x D path
def test_fid_from_features_equals_the_frechet_distance_of_their_statistics(n, d):
    rng = np.random.default_rng(16)
    real, fake = rng.normal(size=(200, d)), rng.normal(0.3, 1.2, size=(n, d))
    mu_r, s_r = feature_stats(real)
    assert fid_from_features(mu_r, s_r, fake) == pytest.approx(
        frechet_distance(mu_r, s_r, *feature_stats(fake)), rel=1e-7
    )


@pytest.mark.parametrize("n,d", [(40, 64), (90, 16)])
def test_bootstrap_fid_replicates_equal_direct_computation(n, d):
    rng = np.random.default_rng(12)
    real, fake = rng.normal(size=(300, d)), rng.normal(0.2, 1.1, size=(n, d))
    mu_r, s_r = feature_stats(real)
    reps = bootstrap_fid(mu_r, s_r, fake, 5, np.random.default_rng(7))
    draw = np.random.default_rng(7)
    for value in reps:
        direct = frechet_distance(mu_r, s_r, *feature_stats(fake[draw.integers(0, n, n)]))
        assert value == pytest.approx(direct, rel=1e-7, abs=1e-9)


# ---- KID -------------------------------------------------------------------------------------------


def test_kid_agrees_with_torchmetrics_on_full_sets():
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(80, 24)), rng.normal(0.2, 1.0, size=(80, 24))
    mean, std = kernel_inception_distance(x, y, subset_size=80, subsets=3)
    theirs = poly_mmd(torch.tensor(x), torch.tensor(y), degree=3, gamma=None, coef=1.0).item()
    assert mean == pytest.approx(theirs, rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)  # full-size subsets are permutations: same value


def test_kid_matches_closed_form_for_zero_mean_gaussians():
    # For zero-mean Gaussians and k(x, y) = (x.y/d + 1)^3: MMD^2 = 3 ||S1 - S2||_F^2 / d^2.
    rng = np.random.default_rng(8)
    d = 6
    s1, s2 = np.diag(rng.uniform(0.5, 1.5, d)), np.diag(rng.uniform(1.5, 3.0, d))
    x = rng.multivariate_normal(np.zeros(d), s1, size=4000)
    y = rng.multivariate_normal(np.zeros(d), s2, size=4000)
    expected = 3 * np.sum((s1 - s2) ** 2) / d**2
    mean, std = kernel_inception_distance(x, y, subset_size=1000, subsets=40, seed=1)
    assert mean == pytest.approx(expected, rel=0.1)


def test_kid_is_near_zero_for_same_distribution_and_grows_with_shift():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same, _ = kernel_inception_distance(x, y, 100, 50)
    shifted, _ = kernel_inception_distance(x, y + 0.5, 100, 50)
    assert abs(same) < 0.02 < shifted


def test_bootstrap_kid_replicates_equal_direct_computation():
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(30, 5)), rng.normal(0.3, 1.0, size=(25, 5))
    reps = bootstrap_kid(x, y, 4, np.random.default_rng(3))
    draw = np.random.default_rng(3)
    for value in reps:
        idx = draw.integers(0, len(y), len(y))
        kxx, kyy, kxy = poly_kernel(x, x), poly_kernel(y[idx], y[idx]), poly_kernel(x, y[idx])
        same_origin = idx[:, None] == idx[None, :]  # pairs of copies of one sample are left out
        xx = (kxx.sum() - np.trace(kxx)) / (len(x) * (len(x) - 1))
        yy = kyy[~same_origin].mean()
        assert value == pytest.approx(xx + yy - 2 * kxy.mean(), rel=1e-9)


@pytest.mark.parametrize("d", [8, 256])  # 256 > N: FID's small-N bias dominates the raw resamples
def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_n(d):
    rng = np.random.default_rng(10)
    real = rng.normal(size=(400, d))
    widths = []
    for n in (50, 200):
        fake = FeatureSet.from_features(rng.normal(0.3, 1.0, size=(n, d)))
        out, _ = compute(
            ["fid", "kid"],
            FeatureSet.from_features(real),
            fake,
            Options(kid_subset_size=n, kid_subsets=1, bootstrap=200),
        )
        assert out["fid_ci_low"] <= out["fid"] <= out["fid_ci_high"]
        assert out["kid_ci_low"] <= out["kid"] <= out["kid_ci_high"]
        widths.append(out["fid_ci_high"] - out["fid_ci_low"])
    assert widths[1] < widths[0] / 1.2


# ---- IS, precision/recall, density/coverage, memorisation -----------------------------------------


def test_inception_score_agrees_with_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = np.random.default_rng(13).normal(0, 3, size=(200, 50))
    for splits in (1, 10):
        ours = inception_score(logits, splits)
        theirs = isc_features_to_metric(torch.tensor(logits), splits=splits, shuffle=False)
        assert ours[0] == pytest.approx(theirs["inception_score_mean"], rel=1e-9)
        assert ours[1] == pytest.approx(theirs["inception_score_std"], rel=1e-6, abs=1e-12)


def test_inception_score_extremes():
    k = 10
    confident_diverse = np.eye(k)[np.arange(100) % k] * 50  # every class, each image sure of its class
    assert inception_score(confident_diverse, 1)[0] == pytest.approx(k, rel=1e-6)
    assert inception_score(np.zeros((100, k)), 1)[0] == pytest.approx(1.0)  # no information at all


def test_precision_recall_on_constructed_sets():
    grid = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)  # 100 real points
    inside = grid[:50] + 0.1  # near the first half of the real points
    far = grid + 1000.0
    assert precision_recall(grid, inside, k=3)["precision"] == 1.0
    assert precision_recall(grid, far, k=3) == {"precision": 0.0, "recall": 0.0}
    half = precision_recall(grid, inside, k=3)["recall"]
    assert 0.4 <= half <= 0.65  # the generated set covers about half of the real one


def test_precision_recall_agree_with_torch_fidelity():
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    rng = np.random.default_rng(14)
    real, fake = rng.normal(size=(120, 10)), rng.normal(0.4, 1.2, size=(90, 10))
    theirs = calculate_precision_recall_full(torch.tensor(fake), torch.tensor(real), neighborhood=3)
    ours = precision_recall(real, fake, k=3)
    assert (ours["precision"], ours["recall"]) == pytest.approx(theirs, abs=1e-6)  # theirs: float32 means


def test_density_and_coverage_on_constructed_sets():
    grid = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)
    assert density_coverage(grid, grid, k=5)["coverage"] == 1.0
    left = grid[grid[:, 0] < 5]
    assert density_coverage(grid, left, k=5)["coverage"] == pytest.approx(0.5, abs=0.12)
    assert density_coverage(grid, grid + 1000, k=5) == {"density": 0.0, "coverage": 0.0}


def test_memorization_flags_copies_of_training_samples():
    rng = np.random.default_rng(15)
    train = rng.normal(size=(300, 16))
    copies = train[:100] + 1e-6
    fresh = rng.normal(size=(100, 16))
    assert memorization(train, copies, 0.05)["memorization"] == 1.0
    assert memorization(train, fresh, 0.05)["memorization"] < 0.2
    half = memorization(train, np.concatenate([copies[:50], fresh[:50]]), 0.05)["memorization"]
    assert 0.5 <= half < 0.6


def test_knn_radii_exclude_the_point_itself():
    x = np.array([[0.0], [1.0], [3.0]])
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="more than k=3"):
        knn_radii(x, 3)


# ---- the registry ---------------------------------------------------------------------------------


def test_registry_direction_and_unknown_names():
    assert set(METRICS) == {"fid", "kid", "is", "pr", "dc", "memorization"}
    assert is_better("fid", 1.0, 2.0) and not is_better("fid", 2.0, 1.0) and not is_better("kid", 1.0, 1.0)
    assert is_better("recall", 0.6, 0.5) and higher_is_better("is") and not higher_is_better("memorization")
    with pytest.raises(ConfigError, match="valid: fid, kid, is, pr, dc, memorization"):
        get_metric("isc")
    with pytest.raises(ConfigError, match="unknown metric key"):
        higher_is_better("f_score")


def test_compute_shares_features_and_reports_unavailable_metrics():
    rng = np.random.default_rng(7)
    real, fake = FeatureSet.from_features(rng.normal(size=(60, 8))), FeatureSet.from_features(rng.normal(size=(60, 8)))
    out, unavailable = compute(list(METRICS), real, fake, Options(kid_subset_size=30, kid_subsets=4))
    assert {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage", "memorization"} <= out.keys()
    assert "is" not in out and "classifier head" in unavailable["is"]
    assert out["fid"] == pytest.approx(frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma), rel=1e-9)
    assert set(DIRECTIONS) >= {k for k in out if not k.endswith(("_std", "_threshold"))}
    with_logits = FeatureSet(fake.features, fake.mu, fake.sigma, logits=rng.normal(size=(60, 20)))
    out, unavailable = compute(["is"], real, with_logits, Options(is_splits=3))
    assert unavailable == {} and out["is"] > 1.0


def test_each_metric_reports_exactly_the_keys_the_shared_vocabulary_names():
    rng = np.random.default_rng(8)
    real = FeatureSet.from_features(rng.normal(size=(60, 8)))
    fake = FeatureSet.from_features(rng.normal(size=(60, 8)), logits=rng.normal(size=(60, 20)))
    for name in METRICS:
        out, unavailable = compute([name], real, fake, Options(kid_subset_size=30, kid_subsets=4, is_splits=3))
        assert unavailable == {}
        reported = {k for k in out if not k.endswith(("_std", "_threshold")) and "_ci_" not in k}
        assert reported == set(REPORTS[name]), name
