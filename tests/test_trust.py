"""What ganpipe loads is data, never code: a model's stored pyfunc never runs in a ganpipe command, and
models outside the project's scope (another registered model, a run of another experiment) are
refused in one line unless named with --allow-foreign-model."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from safetensors.torch import save_file

from ganpipe.cli import main
from ganpipe.core import tracking
from ganpipe.core.hashing import file_sha256
from ganpipe.core.images import provenance, save_png
from ganpipe.nets.checkpoint import G_EMA, GENERATOR_CONFIG, load_checkpoint
from ganpipe.registry.refs import WEIGHTS_SHA256_TAG
from tests.conftest import copy_project

MARKER_ENV = "GANPIPE_TEST_MARKER"
# A pyfunc whose file, when executed, leaves a marker: what an attacker who can log a run would ship.
EVIL_ENTRY = f"""
import os, pathlib
import mlflow
pathlib.Path(os.environ["{MARKER_ENV}"]).write_text("stored code ran")
class Evil(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input
mlflow.models.set_model(Evil())
"""


@pytest.fixture(scope="module")
def _planted_once(_trained_once, tmp_path_factory):
    """A copy of the trained project with three models that carry code: a run of the project's own
    experiment, a run of another experiment, and a version of another registered model; each with real
    weights. Planted once for this module (logging two pyfunc models takes seconds); the tests only read it."""
    p, trained = _trained_once
    lay = copy_project(trained.root, tmp_path_factory.mktemp("planted") / "project")
    ckpt = load_checkpoint(lay.checkpoint_path)
    files = tmp_path_factory.mktemp("planted-files")
    save_file({k: v.contiguous() for k, v in ckpt[G_EMA].items()}, files / "generator.safetensors")
    (files / "config.json").write_text(json.dumps(ckpt[GENERATOR_CONFIG]))
    entry = files / "evil_entry.py"
    entry.write_text(EVIL_ENTRY)
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(MARKER_ENV, str(files / "logging-ran-it"))  # MLflow runs the file when logging it
        tracking.configure(lay.root)
        for key, experiment, registered in (
            ("own", p.base.experiment, None),
            ("foreign", "someone-else", "evil-model"),
        ):
            exp_id = tracking.experiment_id(experiment, lay.root)
            with mlflow.start_run(experiment_id=exp_id) as run:
                mlflow.pyfunc.log_model(
                    name="generator",
                    python_model=str(entry),
                    artifacts={"weights": str(files / "generator.safetensors"), "config": str(files / "config.json")},
                    registered_model_name=registered,
                )
            runs[key] = run.info.run_id
    return p, lay, runs


@pytest.fixture
def planted(_planted_once, tmp_path, monkeypatch):
    """The planted project, with a marker file of this test's own that the stored code would write."""
    p, lay, runs = _planted_once
    tracking.configure(lay.root)  # another test of this process may have pointed MLflow elsewhere
    marker = tmp_path / "marker"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    return p, lay, runs, marker


def _png_pointing_at(model_uri: str, path) -> str:
    meta = {"model": model_uri, "model_uri": model_uri, "version": "", "alias": "", "run_id": "", "data_sha256": ""}
    save_png(Image.new("RGB", (4, 4)), path, provenance(meta, seed=0, psi=1.0, class_=None))
    return str(path)


def test_replay_refuses_a_png_that_points_outside_the_project(planted, tmp_path, capsys):
    p, lay, runs, marker = planted
    png = _png_pointing_at(f"runs:/{runs['foreign']}/generator", tmp_path / "gift.png")
    code = main(["-C", str(lay.root), "generate", "--replay", png, "--out", str(tmp_path / "out.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "someone-else" in err and "--allow-foreign-model" in err
    assert not marker.exists() and not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate", "--model", "models:/evil-model/1"],
        ["serve", "--model", "models:/evil-model/1"],
        ["generate", "--model", "models:/evil-model/1", "--out", "never.png"],
        ["compare", "models:/evil-model/1", "x.json"],
    ],
)
def test_other_registered_models_are_refused(planted, args, capsys):
    p, lay, runs, marker = planted
    code = main(["-C", str(lay.root), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"not this project's registered model {p.registry.model_name!r}" in err
    assert not marker.exists()


def test_a_model_in_scope_loads_its_weights_and_never_runs_its_stored_code(planted, tmp_path):
    p, lay, runs, marker = planted
    out = tmp_path / "own.png"
    assert (
        main(
            ["-C", str(lay.root), "generate", "--model", f"runs:/{runs['own']}/generator", "-n", "4", "--out", str(out)]
        )
        == 0
    )
    assert out.stat().st_size > 0 and not marker.exists()
    # named explicitly, a foreign model loads too: its weights, still never its code
    out = tmp_path / "foreign.png"
    assert (
        main(
            [
                "-C",
                str(lay.root),
                "generate",
                "--model",
                "models:/evil-model/1",
                "-n",
                "4",
                "--out",
                str(out),
                "--allow-foreign-model",
            ]
        )
        == 0
    )
    assert out.stat().st_size > 0 and not marker.exists()
    assert os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION") == "false"


def test_mlflow_itself_would_have_run_it(planted):
    """The marker is a real detector: MLflow's own loader executes the stored file."""
    p, lay, runs, marker = planted
    tracking.configure(lay.root)
    mlflow.pyfunc.load_model(f"runs:/{runs['own']}/generator")
    assert marker.read_text() == "stored code ran"


@pytest.fixture
def registered(trained_project):
    from ganpipe.evaluation.evaluate import evaluate
    from ganpipe.registry.register import register

    p, lay = trained_project
    evaluate(p.eval, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)
    r = register(p.registry, p.eval, lay)
    tracking.configure(lay.root)
    mv = MlflowClient().get_model_version(p.registry.model_name, r["version"])
    weights = Path(MlflowClient().get_model_version_download_uri(mv.name, mv.version).removeprefix("file://"))
    return p, lay, mv, weights / "artifacts" / "generator.safetensors"


def test_registration_records_the_weights_hash(registered):
    p, lay, mv, weights = registered
    assert mv.tags[WEIGHTS_SHA256_TAG] == file_sha256(weights)
    meta = yaml.safe_load((weights.parents[1] / "MLmodel").read_text())["metadata"]
    assert meta[WEIGHTS_SHA256_TAG] == file_sha256(weights)


def _other_valid_weights(path):
    from ganpipe.nets.models import build_generator

    config = json.loads((path.parent / "config.json").read_text())
    torch.manual_seed(123)
    config = {k: v for k, v in config.items() if k != "provenance"}
    save_file({k: v.contiguous() for k, v in build_generator(config).state_dict().items()}, path)


@pytest.mark.parametrize("damage", ["truncated", "swapped"])
def test_a_corrupt_or_swapped_weights_file_is_refused_in_one_line(registered, damage, tmp_path, capsys, monkeypatch):
    p, lay, mv, weights = registered
    temp = tmp_path / "temp"  # the commands' temp dirs: a refused model leaves none behind
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    if damage == "truncated":  # a bad disk, a partial copy to a new server
        weights.write_bytes(weights.read_bytes()[:1000])
    else:  # other weights that load fine
        _other_valid_weights(weights)
    for args in (["generate", "-n", "2", "--out", str(tmp_path / "g.png")], ["serve", "--port", "1"]):
        code = main(["-C", str(lay.root), *args])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"v{mv.version}" in err and "generator.safetensors" in err and "sha256" in err
    assert not (tmp_path / "g.png").exists()
    assert not list(temp.iterdir())
