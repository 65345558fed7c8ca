"""Sweeps: candidates from params.yaml, each a DVC experiment; the best goes through the gate."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from ganpipe.core.errors import ConfigError
from ganpipe.core.params import parse_params
from ganpipe.orchestration.sweep import apply, best, candidates, overrides_args, validate
from tests.conftest import make_project, run, tiny_params_dict

pytestmark = pytest.mark.slow  # whole pipelines, servers or killed processes: `make test`, not `make test-fast`


def test_grid_and_list_expand_to_unique_validated_candidates():
    raw = tiny_params_dict(
        sweep={
            "grid": {"train.lr": [0.0002, 0.0001], "train.loss": ["hinge", "lsgan"]},
            "candidates": [{"train.lr": 0.0001, "train.loss": "hinge"}, {"model.arch": "resnet"}],
        }
    )
    found = candidates(parse_params(raw).sweep)
    assert len(found) == 5 and found[0] == {"train.lr": 0.0002, "train.loss": "hinge"}  # the duplicate once
    params = validate(raw, found)
    assert params[4].model.arch == "resnet" and params[1].train.loss == "lsgan"
    assert overrides_args({"train.lr": 0.0001, "train.loss": "hinge"}) == [
        "-S",
        "train.lr=0.0001",
        "-S",
        "train.loss=hinge",
    ]


def test_bad_candidates_fail_before_anything_runs():
    raw = tiny_params_dict()
    with pytest.raises(ConfigError, match="'train.lrr' is not a params.yaml key"):
        apply(raw, {"train.lrr": 1.0})
    with pytest.raises(ConfigError, match=r"sweep candidate 2 .*train.loss = 'wgan'"):
        validate(raw, [{"train.loss": "hinge"}, {"train.loss": "wgan"}])
    with pytest.raises(ConfigError, match="no candidates"):
        validate(raw, [])
    with pytest.raises(ConfigError, match="has no values"):
        parse_params(tiny_params_dict(sweep={"grid": {"train.lr": []}, "candidates": []}))


def test_best_follows_the_metric_direction():
    results = [
        {"name": "a", "scores": {"kid": 0.3, "recall": 0.2}},
        {"name": "b", "scores": {"kid": 0.1, "recall": 0.1}},
    ]
    assert best(results, "kid")["name"] == "b" and best(results, "recall")["name"] == "a"


def test_sweep_flow_trains_each_candidate_as_an_experiment_and_registers_the_best(tmp_path, prefect_harness):
    from ganpipe.orchestration.sweep_flow import sweep

    raw = tiny_params_dict(sweep={"grid": {"train.total_kimg": [0.064, 0.256]}, "candidates": []})
    project = make_project(tmp_path / "project", raw)
    out = sweep(project_dir=str(project))
    results, winner = out["candidates"], out["winner"]
    assert [r["overrides"] for r in results] == [{"train.total_kimg": 0.064}, {"train.total_kimg": 0.256}]
    kid = [r["scores"]["kid"] for r in results]
    assert winner["scores"]["kid"] == min(kid) and kid[0] != kid[1]
    # the winner is what the workspace holds now and what was registered
    applied = yaml.safe_load((project / "params.yaml").read_text())
    assert applied["train"]["total_kimg"] == winner["overrides"]["train.total_kimg"]
    registration = json.loads((project / "reports" / "registration.json").read_text())
    assert registration["metrics"]["kid"] == pytest.approx(winner["scores"]["kid"])
    assert registration["promoted"] and out["registration"]["version"] == "1"
    # each candidate is an experiment with its own lineage
    shown = run([sys.executable, "-m", "dvc", "exp", "show", "--json"], project).stdout
    for r in results:
        assert r["name"] in shown
    from prefect.artifacts import Artifact

    table = str(Artifact.get("sweep").data)
    assert f"{winner['name']} (best)" in table and "train.total_kimg=0.064" in table


def test_parallel_sweep_runs_the_candidates_through_dvcs_queue(tmp_path, prefect_harness):
    from ganpipe.orchestration.sweep_flow import sweep

    raw = tiny_params_dict(sweep={"grid": {"train.total_kimg": [0.064, 0.256]}, "candidates": [], "jobs": 2})
    project = make_project(tmp_path / "project", raw)
    out = sweep(project_dir=str(project))
    results, winner = out["candidates"], out["winner"]
    assert all(r["scores"] for r in results), results
    kid = [r["scores"]["kid"] for r in results]
    assert winner["scores"]["kid"] == min(kid) and kid[0] != kid[1]
    applied = yaml.safe_load((project / "params.yaml").read_text())
    assert applied["train"]["total_kimg"] == winner["overrides"]["train.total_kimg"]
    assert applied["sweep"]["jobs"] == 2
    registration = json.loads((project / "reports" / "registration.json").read_text())
    assert registration["metrics"]["kid"] == pytest.approx(winner["scores"]["kid"])
    # the candidates trained in temp directories logged to the project's MLflow store
    from tests.conftest import mlflow_client

    client = mlflow_client(project)
    runs = client.search_runs(
        [client.get_experiment_by_name(raw["base"]["experiment"]).experiment_id], "tags.`ganpipe.stage` = 'train'"
    )
    assert len(runs) == 2 and winner["mlflow_run_id"] in {r.info.run_id for r in runs}
