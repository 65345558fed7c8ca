"""Content-addressed reference statistics, cached generated features, the comparability guard,
scoring any model from the CLI, and agreement with torch-fidelity on the same images."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ganpipe.core.errors import ConfigError
from ganpipe.core.params import EvalParams
from ganpipe.data.prepare import load_split
from ganpipe.evaluation.evaluate import score_generator
from ganpipe.evaluation.features import build_extractor
from ganpipe.evaluation.protocol import IncomparableError, check_comparable
from ganpipe.evaluation.refstats import compute_ref_stats, load_ref_stats
from ganpipe.nets.checkpoint import generator_from_checkpoint
from ganpipe.nets.models import sample


class CountingExtractor:
    """Wraps an extractor and counts images that went through the network."""

    def __init__(self, inner):
        self.inner, self.images = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def extract(self, images, batch_size):
        self.images += len(images)
        return self.inner.extract(images, batch_size)

    def extract_all(self, images, batch_size):
        self.images += len(images)
        return self.inner.extract_all(images, batch_size)


def test_reference_stats_are_computed_once_per_content_key(trained_project, tmp_path, monkeypatch):
    monkeypatch.setenv("GANPIPE_CACHE_DIR", str(tmp_path / "cache"))  # start cold
    p, lay = trained_project
    ext = CountingExtractor(build_extractor(p.eval))
    first = compute_ref_stats(ext, 64, 32, lay.prepared_dir, tmp_path / "a.npz")
    assert ext.images == 64 and not first.from_cache
    again = compute_ref_stats(ext, 64, 16, lay.prepared_dir, tmp_path / "b.npz")  # other batch size, same key
    assert ext.images == 64 and again.from_cache
    assert np.array_equal(
        load_ref_stats(tmp_path / "a.npz").stats.features, load_ref_stats(tmp_path / "b.npz").stats.features
    )
    other = compute_ref_stats(ext, 65, 32, lay.prepared_dir, tmp_path / "c.npz")  # N is part of the key
    assert ext.images == 64 + 65 and not other.from_cache
    assert {"data_sha256", "weights_sha256", "resize", "num_real"} <= first.key.keys()


def test_a_second_evaluation_of_the_same_generator_reuses_its_features(trained_project, tmp_path, monkeypatch):
    monkeypatch.setenv("GANPIPE_CACHE_DIR", str(tmp_path / "cache"))  # start cold
    p, lay = trained_project
    ref = load_ref_stats(lay.ref_stats_path)
    G, _ = generator_from_checkpoint(lay.checkpoint_path)
    ext = CountingExtractor(build_extractor(p.eval))
    first = score_generator(G, ext, ref, p.eval)
    seen = ext.images
    second = score_generator(G, ext, ref, p.eval)
    assert seen == p.eval.num_fake and not first["generated_features_cached"]
    assert ext.images == seen and second["generated_features_cached"]
    assert {k: v for k, v in first.items() if k != "generated_features_cached"} == {
        k: v for k, v in second.items() if k != "generated_features_cached"
    }
    # other weights are another key: a changed generator is re-extracted
    with torch.no_grad():
        next(G.parameters()).add_(0.01)
    third = score_generator(G, ext, ref, p.eval)
    assert ext.images == 2 * seen and not third["generated_features_cached"]


def test_the_guard_names_what_differs():
    a = {"fingerprint": "1", "protocol": {"num_fake": 500, "resize": "tf1-bilinear-299"}}
    b = {"fingerprint": "2", "protocol": {"num_fake": 10000, "resize": "tf1-bilinear-299"}}
    with pytest.raises(IncomparableError, match="num_fake: 500 vs 10000"):
        check_comparable(a, b)
    check_comparable(a, dict(a))


@pytest.mark.slow  # `ganpipe evaluate` processes: `make test`, not the in-process inner loop
def test_cli_scores_any_model_and_compare_refuses_other_protocols(trained_project, tmp_path, run_cli):
    p, lay = trained_project
    base = [sys.executable, "-m", "ganpipe", "-C", str(lay.root)]

    def ganpipe(*args):
        proc = subprocess.run(base + list(args), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc

    out = ganpipe("evaluate", "--model", str(lay.checkpoint_path), "--out", str(tmp_path / "ckpt.json"))
    assert "fid=" in out.stdout and "is: unavailable" in out.stdout
    twin = json.loads((tmp_path / "ckpt.json").read_text())
    table = ganpipe("compare", str(tmp_path / "ckpt.json"), str(tmp_path / "ckpt.json")).stdout
    assert "kid" in table and "tie" in table
    other = dict(twin, fingerprint="ffffffffffffffff", protocol={**twin["protocol"], "num_fake": 7})
    (tmp_path / "other.json").write_text(json.dumps(other))
    code, _, err = run_cli("-C", lay.root, "compare", tmp_path / "ckpt.json", tmp_path / "other.json")
    assert code == 2 and "refusing to compare" in err and "num_fake" in err


def test_unknown_metric_in_params_is_a_config_error():
    with pytest.raises(ConfigError):
        from ganpipe.core.params import parse_params
        from tests.conftest import tiny_params_dict

        raw = tiny_params_dict()
        raw["eval"]["metrics"] = ["fid", "precision"]
        parse_params(raw)


@pytest.mark.inception
@pytest.mark.slow  # the real InceptionV3 through two libraries (25 s): `make test`
def test_agreement_with_torch_fidelity_on_the_same_images(trained_project, tmp_path):
    """Same images, same weights: our FID and KID equal torch-fidelity's `calculate_metrics`.

    (Its precision/recall runs on VGG16 features by default; ours is checked against its own
    function on the same features in test_metrics.)"""
    import torch_fidelity

    from ganpipe.evaluation.frechet import feature_stats, frechet_distance
    from ganpipe.evaluation.kid import kernel_inception_distance

    p, lay = trained_project
    images, _ = load_split(lay.prepared_dir, "train")
    real = torch.from_numpy(np.array(images[:20])).expand(-1, 3, -1, -1).contiguous()  # N = subset size:
    G, _ = generator_from_checkpoint(lay.checkpoint_path)
    fake = sample(G, range(20)).expand(-1, 3, -1, -1).contiguous()  # no subsampling
    # (generated vs real: with two near-identical real sets KID is ~1e-3 and torch-fidelity's float32
    # kernel sums lose about 1e-3 of it to cancellation; ours are float64)
    ep = EvalParams(**{**p.eval.model_dump(), "extractor": "inception", "inception_weights": None})
    ext = build_extractor(ep)
    fr, ff = ext.extract(real, 10), ext.extract(fake, 10)
    ours = {
        "fid": frechet_distance(*feature_stats(fr), *feature_stats(ff)),
        "kid": kernel_inception_distance(fr, ff, subset_size=20, subsets=1)[0],
    }

    from ganpipe.evaluation.fidelity_peer import ImageTensors, weights_for_torch_fidelity
    from ganpipe.evaluation.inception import resolve_weights

    weights = weights_for_torch_fidelity(resolve_weights(None, allow_download=False).path, tmp_path / "w.pth")
    theirs = torch_fidelity.calculate_metrics(
        input1=ImageTensors(fake),
        input2=ImageTensors(real),
        fid=True,
        kid=True,
        kid_subset_size=20,
        kid_subsets=1,
        cuda=False,
        cache=False,
        verbose=False,
        batch_size=10,
        feature_extractor_weights_path=str(weights),
    )
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    assert ours["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)
