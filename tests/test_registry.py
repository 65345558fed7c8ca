"""Registration and promotion against a real MLflow SQLite registry."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest

from ganpipe import tracking
from ganpipe.checkpoint import load_generator
from ganpipe.evaluate import evaluate
from ganpipe.models import sample
from ganpipe.promotion import decide
from ganpipe.protocol import IncomparableError
from ganpipe.registry import register
from tests.conftest import mlflow_client


FP = {"fingerprint": "aaaa"}


@pytest.mark.parametrize("candidate,champion,promote,words", [
    ({"kid": 0.5, **FP}, None, True, "first version"),
    ({"kid": 0.4, **FP}, {"kid": 0.5, **FP}, True, "beats"),
    ({"kid": 0.5, **FP}, {"kid": 0.5, **FP}, False, "does not beat"),   # a tie keeps the champion
    ({"kid": 0.6, **FP}, {"kid": 0.5, **FP}, False, "does not beat"),
    ({"kid": math.nan, **FP}, None, False, "no finite kid"),
    ({"fid": 1.0, **FP}, None, False, "no finite kid"),
])
def test_promotion_rule(candidate, champion, promote, words):
    d = decide(candidate, champion, "kid")
    assert d.promote is promote and words in d.reason


def test_promotion_refuses_results_from_different_protocols():
    candidate = {"kid": 0.1, "fingerprint": "aaaa", "protocol": {"num_fake": 500}}
    champion = {"kid": 0.5, "fingerprint": "bbbb", "protocol": {"num_fake": 50000}}
    with pytest.raises(IncomparableError, match="num_fake: 500 vs 50000"):
        decide(candidate, champion, "kid")


def _set_metrics(lay, **changes):
    m = json.loads(lay.metrics_path.read_text())
    m.update(changes)
    lay.metrics_path.write_text(json.dumps(m))
    return m


def test_register_promote_reject_and_rescore(trained_project):
    p, lay = trained_project
    evaluate(p.eval, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)
    real = json.loads(lay.metrics_path.read_text())
    name, alias = p.registry.model_name, p.registry.alias

    r1 = register(p.registry, p.eval, lay)
    assert r1["promoted"] and r1["version"] == "1" and r1["previous_champion"] is None
    client = mlflow_client(lay.root)
    assert str(client.get_model_version_by_alias(name, alias).version) == "1"
    tags = client.get_model_version(name, "1").tags
    run_info = json.loads(lay.run_info_path.read_text())
    assert tags["data_sha256"] == run_info["data_sha256"]
    assert tags["git_commit"] == run_info["git_commit"] and len(tags["params_hash"]) == 64
    assert float(tags["metric.kid"]) == pytest.approx(real["kid"]) and tags["gate.decision"] == "promoted"

    _set_metrics(lay, kid=real["kid"] + 1.0)  # a worse challenger under the same protocol
    r2 = register(p.registry, p.eval, lay)
    assert not r2["promoted"] and r2["version"] == "2" and r2["champion"] == "1"
    assert str(client.get_model_version_by_alias(name, alias).version) == "1"
    assert client.get_model_version(name, "2").tags["gate.decision"] == "rejected"

    _set_metrics(lay, kid=real["kid"] - 1.0)  # a better one
    r3 = register(p.registry, p.eval, lay)
    assert r3["promoted"] and str(client.get_model_version_by_alias(name, alias).version) == "3"

    # The champion was scored under an older protocol: it is re-scored under the current one (its real
    # scores, not the stored -1.0 offset ones) before the comparison, and the re-score is cached on it.
    _set_metrics(lay, kid=real["kid"] - 0.5)
    client.set_model_version_tag(name, "3", "eval.fingerprint", "0123456789abcdef")
    r4 = register(p.registry, p.eval, lay)
    assert r4["champion_metrics"]["kid"] == pytest.approx(real["kid"], rel=1e-9)
    assert r4["promoted"]
    assert f"rescore.{real['fingerprint']}.kid" in client.get_model_version(name, "3").tags
    assert json.loads(lay.registration_path.read_text())["version"] == "4"

    # A candidate whose scores come from another protocol than the champion's is refused, not compared.
    _set_metrics(lay, fingerprint="fedcba9876543210")
    with pytest.raises(IncomparableError, match="refusing to compare the candidate and the champion"):
        register(p.registry, p.eval, lay)
    assert str(client.get_model_version_by_alias(name, alias).version) == "4"


def test_champion_loads_without_pickle_and_generates_like_the_checkpoint(trained_project, tmp_path):
    p, lay = trained_project
    if not lay.registration_path.exists():
        evaluate(p.eval, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)
        register(p.registry, p.eval, lay)
    tracking.configure(lay.root)
    uri = f"models:/{p.registry.model_name}@{p.registry.alias}"
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model"))
    files = [f.name for f in (tmp_path / "model").rglob("*") if f.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))], files
    assert "generator.safetensors" in files and "MLmodel" in files
    model = mlflow.pyfunc.load_model(uri)
    assert model.metadata.signature.inputs.input_names() == ["seed"]
    images = np.asarray(model.predict(pd.DataFrame({"seed": [0, 1, 2]})))
    G, config = load_generator(lay.checkpoint_path)
    expected = sample(G, [0, 1, 2]).permute(0, 2, 3, 1).numpy()
    assert images.dtype == np.uint8 and images.shape == expected.shape
    assert local and np.array_equal(images, expected)  # same weights, same seeds, same pixels


def test_generate_cli_same_seed_same_image(trained_project, tmp_path):
    p, lay = trained_project
    if not lay.registration_path.exists():
        evaluate(p.eval, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)
        register(p.registry, p.eval, lay)
    outs = []
    for seed, name in [(0, "a.png"), (0, "b.png"), (1, "c.png")]:
        cmd = [sys.executable, "-m", "ganpipe", "-C", str(lay.root), "generate", "-n", "9", "--seed", str(seed),
               "--out", str(tmp_path / name)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1] and outs[0] != outs[2]
    bad = subprocess.run([sys.executable, "-m", "ganpipe", "-C", str(lay.root), "generate", "--model",
                          "models:/no-such-model@champion"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no-such-model" in bad.stderr and "Traceback" not in bad.stderr
