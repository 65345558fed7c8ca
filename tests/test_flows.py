"""The Prefect flow reproduces the DVC stages and ends with a registered champion."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from ganpipe.core.dvc import ensure_remote
from ganpipe.core.errors import ConfigError
from tests.conftest import mlflow_client, run

pytestmark = pytest.mark.slow  # whole pipelines, servers or killed processes: `make test`, not `make test-fast`


def test_training_pipeline_registers_a_champion_and_leaves_the_dvc_lock(project, prefect_harness):
    from ganpipe.orchestration.pipeline import training_pipeline

    result = training_pipeline(project_dir=str(project))
    assert result["version"] == "1" and result["promoted"] and result["champion"] == "1"
    # where the time went, by stage in the order run (`ganpipe run` prints it)
    assert list(result["stage_seconds"]) == [
        "dvc status",
        "prepare",
        "dvc push",
        "ref-stats",
        "train",
        "evaluate",
        "register",
        "plots + report",
    ]
    assert all(s > 0 for s in result["stage_seconds"].values())
    client = mlflow_client(project)
    holder = client.get_model_version_by_alias(result["model_name"], result["alias"])
    assert str(holder.version) == "1"
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"prepare", "ref-stats", "train", "evaluate", "register"}
    # the flow left exactly what `dvc repro` expects: nothing to do
    status = run([sys.executable, "-m", "dvc", "status"], project)
    assert "Data and pipelines are up to date" in status.stdout

    # the run names its dataset (content sha256 and DVC's hash); so does the registered version
    prepared_md5 = next(o["md5"] for o in lock["prepare"]["outs"] if o["path"] == "data/prepared")
    manifest = json.loads((project / "data" / "prepared" / "manifest.json").read_text())
    run_inputs = client.get_run(holder.run_id).inputs.dataset_inputs
    tags = {t.key: t.value for t in run_inputs[0].tags}
    assert tags["sha256"] == manifest["sha256"] and tags["dvc_md5"] == prepared_md5
    assert holder.tags["data_dvc_md5"] == prepared_md5 and holder.tags["data_source"] == "digits"

    # the summary went to the MLflow run's description and to a Prefect artifact of the flow run
    note = client.get_run(holder.run_id).data.tags["mlflow.note.content"]
    assert f"v1 is the new {result['alias']}" in note and "| kid |" in note
    # ... and the training run names the flow run that made it (the studio links it in the Prefect UI)
    from uuid import UUID

    from prefect.client.orchestration import get_client

    from ganpipe.core.tracking import FLOW_RUN_TAG

    with get_client(sync_client=True) as prefect:
        made_by = prefect.read_flow_run(UUID(client.get_run(holder.run_id).data.tags[FLOW_RUN_TAG]))
    assert made_by.state.is_completed()
    assert _artifact("training-pipeline") and "| kid |" in _artifact("training-pipeline")
    # the sample grid and the training curves (dvc plots) are artifacts too
    assert _artifact("samples").startswith("data:image/png;base64,")
    plots = project / "reports" / "plots" / "index.html"
    assert plots.as_uri() in _artifact("training-curves") and "quick_kid" in plots.read_text()
    assert plots.as_uri() in note

    # a second flow run on unchanged inputs ends at once as Skipped, visible in Prefect and MLflow
    state = training_pipeline(project_dir=str(project), return_state=True)
    assert state.name == "Skipped" and "nothing changed" in state.message
    again = state.result()
    assert again["skipped"] and again["champion"] == "1"
    assert len(client.search_model_versions(f"name='{result['model_name']}'")) == 1
    skipped = client.search_runs(
        [client.get_run(holder.run_id).info.experiment_id], "tags.`ganpipe.skipped` = 'nothing changed'"
    )
    assert len(skipped) == 1
    assert "skipped: nothing changed" in _artifact("training-pipeline")

    # --force retrains on unchanged inputs: a new version goes through the gate (same seed: no better)
    forced = training_pipeline(project_dir=str(project), force=True)
    assert not forced["skipped"] and forced["version"] == "2" and not forced["promoted"]

    # the flow pushed the prepared data: a fresh clone pulls exactly the same files
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    run(git + ["add", "-A"], project)
    run(git + ["commit", "-q", "-m", "pipeline run"], project)
    clone = project.parent / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], project.parent)
    ensure_remote(clone)
    run([sys.executable, "-m", "dvc", "pull", "prepare"], clone)
    for f in (project / "data" / "prepared").iterdir():
        assert (clone / "data" / "prepared" / f.name).read_bytes() == f.read_bytes(), f.name


def _artifact(key: str) -> str:
    """The latest markdown of the Prefect artifact `key`, read back from the (test) server."""
    from prefect.artifacts import Artifact

    found = Artifact.get(key)
    return "" if found is None else str(found.data)


def test_bad_params_fail_the_flow_before_any_stage(project, prefect_harness):
    from ganpipe.orchestration.pipeline import training_pipeline

    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"]["lrr"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="unknown key 'train.lrr'"):
        training_pipeline(project_dir=str(project))
    assert not (project / "dvc.lock").exists() and not (project / "data").exists()
