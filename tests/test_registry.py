"""Registration and promotion against a real MLflow SQLite registry."""

from __future__ import annotations

import base64
import io
import json
import math
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ganpipe.core import tracking
from ganpipe.core.params import GateParams
from ganpipe.evaluation.evaluate import evaluate
from ganpipe.evaluation.protocol import IncomparableError
from ganpipe.nets.checkpoint import generator_from_checkpoint, load_checkpoint, save_checkpoint
from ganpipe.nets.models import sample
from ganpipe.registry.gate import gate
from ganpipe.registry.register import register
from tests.conftest import as_new_training, last_conv_key, mlflow_client

G = GateParams(
    margin=0.0,
    bootstrap=100,
    confidence=0.95,
    guard_metrics=["recall", "coverage"],
    guard_tolerance=0.05,
    memorization_limit=0.2,
)
CHAMP = {"kid": 0.50, "recall": 0.40, "coverage": 0.50, "memorization": 0.05, "fingerprint": "aaaa"}


def _cand(**changes):
    return {**CHAMP, **changes}


def _vs_champion(*failed: str) -> dict:
    """The checks against a champion, in order, as name: passed, with `failed` the ones that fail."""
    names = ["kid_better", "memorization", "recall_not_worse", "coverage_not_worse"]
    return {n: n not in failed for n in names}


@pytest.mark.parametrize(
    "candidate,champion,diff,promote,words,checks",
    [
        (_cand(), None, None, True, "first version", {"memorization": True}),
        (_cand(memorization=0.9), None, None, False, "memorization", {"memorization": False}),
        (_cand(kid=math.nan), None, None, False, "no finite kid", {}),  # refused before any check
        (_cand(kid=0.30), CHAMP, (-0.20, -0.25, -0.15), True, "all checks passed", _vs_champion()),  # clear win
        (_cand(kid=0.49), CHAMP, (-0.01, -0.05, 0.03), False, "kid_better failed", _vs_champion("kid_better")),  # tie
        (
            _cand(kid=0.30, recall=0.20),
            CHAMP,
            (-0.20, -0.25, -0.15),
            False,
            "recall_not_worse failed",
            _vs_champion("recall_not_worse"),
        ),
        (  # coverage worse by 0.04: within the 0.05 tolerance
            _cand(kid=0.30, coverage=0.46),
            CHAMP,
            (-0.20, -0.25, -0.15),
            True,
            "all checks passed",
            _vs_champion(),
        ),
        (
            _cand(kid=0.30, memorization=0.5),
            CHAMP,
            (-0.20, -0.25, -0.15),
            False,
            "memorization failed",
            _vs_champion("memorization"),
        ),
    ],
)
def test_gate_on_synthetic_scores(candidate, champion, diff, promote, words, checks):
    d = gate(candidate, champion, "kid", diff, G)
    assert d.promote is promote and words in d.reason
    assert [(c.name, c.passed) for c in d.checks] == list(checks.items())
    assert d.promote is (bool(d.checks) and all(c.passed for c in d.checks))  # promoted: checked, all passed


def test_gate_margin_and_direction():
    strict = G.model_copy(update={"margin": 0.2})
    assert not gate(_cand(kid=0.3), CHAMP, "kid", (-0.2, -0.25, -0.15), strict).promote
    assert gate(_cand(kid=0.3), CHAMP, "kid", (-0.3, -0.35, -0.25), strict).promote


def test_gate_refuses_results_from_different_protocols():
    candidate = _cand(fingerprint="bbbb", protocol={"num_fake": 500})
    champion = {**CHAMP, "protocol": {"num_fake": 50000}}
    with pytest.raises(IncomparableError, match="num_fake: 500 vs 50000"):
        gate(candidate, champion, "kid", (-0.2, -0.25, -0.15), G)


def _evaluate(p, lay):
    return evaluate(p.eval, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)


def test_register_first_better_worse_tie_and_rescore(trained_project):
    p, lay = trained_project
    name, alias = p.registry.model_name, p.registry.alias
    client = mlflow_client(lay.root)
    original = lay.checkpoint_path.read_bytes()
    ckpt = load_checkpoint(lay.checkpoint_path)
    key = last_conv_key(ckpt["G_ema"])
    damped = {**ckpt["G_ema"], key: ckpt["G_ema"][key] * 0.02}  # saturated tanh needs a strong damping
    save_checkpoint(lay.checkpoint_path, {k: v for k, v in {**ckpt, "G_ema": damped}.items() if k != "format_version"})
    _evaluate(p, lay)  # a worse generator: output layer damped, low-contrast images
    r1 = register(p.registry, p.eval, lay)
    assert r1["promoted"] and r1["version"] == "1" and r1["interval"] is None

    lay.checkpoint_path.write_bytes(original)
    as_new_training(lay)  # another training (register reuses a training's version when retried)
    good = _evaluate(p, lay)
    r2 = register(p.registry, p.eval, lay)
    assert r2["promoted"], r2["reason"]
    assert r2["interval"]["high"] < 0 and r2["previous_champion"] == "1"
    assert {c["name"] for c in r2["checks"]} == {
        "kid_better",
        "recall_not_worse",
        "coverage_not_worse",
        "memorization",
    }
    tags = client.get_model_version(name, "2").tags
    assert tags["gate.decision"] == "promoted" and tags["gate.check.kid_better"].startswith("pass")
    run_info = json.loads(lay.run_info_path.read_text())
    assert tags["data_sha256"] == run_info["data_sha256"] and tags["git_commit"] == run_info["git_commit"]
    assert len(tags["params_hash"]) == 64 and float(tags["metric.kid"]) == pytest.approx(good["kid"])

    as_new_training(lay)
    r3 = register(p.registry, p.eval, lay)  # the same weights again: a tie keeps the champion
    assert not r3["promoted"] and r3["champion"] == "2"
    assert r3["interval"]["low"] <= 0 <= r3["interval"]["high"]
    assert client.get_model_version(name, "3").tags["gate.decision"] == "rejected"

    # The champion was scored under an older protocol: it is re-scored under the current one.
    client.set_model_version_tag(name, "2", "eval.fingerprint", "0123456789abcdef")
    as_new_training(lay)
    r4 = register(p.registry, p.eval, lay)
    assert r4["champion_metrics"]["kid"] == pytest.approx(good["kid"], rel=1e-9)
    assert f"rescore.{good['fingerprint']}.kid" in client.get_model_version(name, "2").tags

    # Scores from another protocol than the champion's are refused, and nothing is registered.
    m = json.loads(lay.metrics_path.read_text())
    lay.metrics_path.write_text(json.dumps({**m, "fingerprint": "fedcba9876543210"}))
    as_new_training(lay)
    with pytest.raises(IncomparableError, match="refusing to compare the candidate and the champion"):
        register(p.registry, p.eval, lay)
    assert len(client.search_model_versions(f"name='{name}'")) == 4
    assert str(client.get_model_version_by_alias(name, alias).version) == "2"


def test_champion_loads_without_pickle_and_generates_like_the_checkpoint(trained_project, tmp_path):
    p, lay = trained_project
    _evaluate(p, lay)
    register(p.registry, p.eval, lay)  # v1, the champion
    tracking.configure(lay.root)
    uri = f"models:/{p.registry.model_name}@{p.registry.alias}"
    mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model"))
    files = [f.name for f in (tmp_path / "model").rglob("*") if f.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))], files
    assert "generator.safetensors" in files and "MLmodel" in files
    model = mlflow.pyfunc.load_model(uri)
    # inputs are validated by the model itself (an input schema would drop unknown fields silently)
    assert model.metadata.signature.inputs is None and "seed" in model.metadata.metadata["ganpipe_input"]
    out = model.predict(pd.DataFrame({"seed": [0, 1, 2]}))
    images = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in out["image"]])
    G, config = generator_from_checkpoint(lay.checkpoint_path)
    expected = sample(G, [0, 1, 2]).permute(0, 2, 3, 1).numpy()  # N, H, W, C
    if expected.shape[-1] == 1:
        expected = expected[..., 0]  # a greyscale PNG decodes to H x W
    assert images.dtype == expected.dtype == np.uint8 and images.shape == expected.shape
    assert not np.array_equal(images[0], images[1])  # seeds give different images: equality below means something
    assert np.array_equal(images, expected)  # same weights, seeds, pixels


@pytest.mark.slow  # three `ganpipe generate` processes (the point: the same image in each): `make test`
def test_generate_cli_same_seed_same_image(trained_project, tmp_path, run_cli):
    p, lay = trained_project
    _evaluate(p, lay)
    register(p.registry, p.eval, lay)  # v1, the champion
    outs = []  # each from a process of its own: the same image whatever else ran before
    for seed, name in [(0, "a.png"), (0, "b.png"), (1, "c.png")]:
        cmd = [
            sys.executable,
            "-m",
            "ganpipe",
            "-C",
            str(lay.root),
            "generate",
            "-n",
            "9",
            "--seed",
            str(seed),
            "--out",
            str(tmp_path / name),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1] and outs[0] != outs[2]
    code, _, err = run_cli(
        "-C", lay.root, "generate", "--model", "models:/no-such-model@champion", "--out", tmp_path / "none.png"
    )
    assert code == 2 and "no-such-model" in err and "Traceback" not in err and not (tmp_path / "none.png").exists()
    code, _, err = run_cli("-C", lay.root, "generate", "--class", "3", "--out", tmp_path / "cls.png")
    assert code == 2 and "unconditional" in err and not (tmp_path / "cls.png").exists()
    assert "Warning" not in err  # one clear line, no library noise
