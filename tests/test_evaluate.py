"""Evaluation end to end with the tiny extractor: metrics file, MLflow run, protocol guard."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ganpipe.core.errors import DataError
from ganpipe.evaluation.evaluate import evaluate
from ganpipe.evaluation.features import build_extractor
from ganpipe.evaluation.frechet import frechet_distance
from ganpipe.evaluation.refstats import load_ref_stats
from ganpipe.nets.checkpoint import generator_from_checkpoint
from ganpipe.nets.models import sample
from tests.conftest import mlflow_client


def _evaluate(p, lay, out=None):
    return evaluate(
        p.eval, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, out or lay.metrics_path, lay.root
    )


def test_evaluate_writes_metrics_and_logs_them_to_the_training_run(trained_project):
    p, lay = trained_project
    result = _evaluate(p, lay)
    on_disk = json.loads(lay.metrics_path.read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert {"fid", "kid", "kid_std", "fingerprint", "protocol"} <= on_disk.keys()
    assert on_disk["protocol"]["num_fake"] == p.eval.num_fake
    assert on_disk["protocol"]["num_real"] == p.eval.num_real
    run_id = json.loads(lay.run_info_path.read_text())["mlflow_run_id"]
    run = mlflow_client(lay.root).get_run(run_id)
    assert run.data.metrics["fid"] == pytest.approx(result["fid"])
    assert run.data.metrics["kid"] == pytest.approx(result["kid"])
    assert run.data.tags["eval.fingerprint"] == result["fingerprint"]
    assert run.data.tags["eval.protocol.weights_sha256"] == load_ref_stats(lay.ref_stats_path).key["weights_sha256"]
    # every selected metric is reported, or said to be unavailable, never faked
    for key in ("fid", "kid", "precision", "recall", "density", "coverage", "memorization"):
        assert key in run.data.metrics
    assert "classifier head" in run.data.tags["eval.unavailable.is"] and "is" not in run.data.metrics
    assert on_disk["fid_ci_low"] <= on_disk["fid"] <= on_disk["fid_ci_high"]


def test_fid_is_the_frechet_distance_of_the_shared_features(trained_project):
    p, lay = trained_project
    result = _evaluate(p, lay)
    ref = load_ref_stats(lay.ref_stats_path)
    G, _ = generator_from_checkpoint(lay.checkpoint_path)
    feats = build_extractor(p.eval).extract(sample(G, range(p.eval.seed, p.eval.seed + p.eval.num_fake)), 17)
    expected = frechet_distance(ref.stats.mu, ref.stats.sigma, feats.mean(0), np.cov(feats, rowvar=False))
    assert result["fid"] == pytest.approx(expected, rel=1e-9)


def test_scores_do_not_depend_on_batch_size(trained_project, tmp_path):
    p, lay = trained_project
    a = _evaluate(p, lay, tmp_path / "a.json")
    p7 = p.model_copy(update={"eval": p.eval.model_copy(update={"batch_size": 7})})
    b = _evaluate(p7, lay, tmp_path / "b.json")
    assert a["fid"] == pytest.approx(b["fid"], rel=1e-6) and a["kid"] == pytest.approx(b["kid"], rel=1e-6)
    assert a["fingerprint"] == b["fingerprint"]


def test_protocol_change_changes_the_fingerprint(trained_project, tmp_path):
    p, lay = trained_project
    a = _evaluate(p, lay, tmp_path / "a.json")
    other = p.model_copy(update={"eval": p.eval.model_copy(update={"num_fake": p.eval.num_fake + 10})})
    b = _evaluate(other, lay, tmp_path / "b.json")
    assert a["fingerprint"] != b["fingerprint"]


def test_reference_stats_from_another_extractor_are_refused(trained_project, tmp_path):
    p, lay = trained_project
    ref = load_ref_stats(lay.ref_stats_path)
    from ganpipe.evaluation.refstats import RefStats, save_ref_stats

    forged = tmp_path / "ref.npz"
    save_ref_stats(RefStats(ref.stats, {**ref.key, "weights_sha256": "0" * 64}), forged)
    with pytest.raises(DataError, match="re-run `ganpipe ref-stats`"):
        evaluate(p.eval, lay.checkpoint_path, forged, lay.run_info_path, tmp_path / "m.json", lay.root)
    with pytest.raises(DataError, match="run `ganpipe ref-stats` first"):
        evaluate(
            p.eval, lay.checkpoint_path, tmp_path / "missing.npz", lay.run_info_path, tmp_path / "m.json", lay.root
        )
