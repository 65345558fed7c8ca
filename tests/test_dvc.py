"""DVC owns the stage graph: exact deps/params/outs, and `dvc repro` re-runs only what changed."""

from __future__ import annotations

import re
import sys

import pytest
import yaml

from ganpipe.core.paths import layout
from ganpipe.training import loop as train_stage
from tests.conftest import REPO, run

STAGES = ["prepare", "ref-stats", "train", "evaluate", "register"]


def _dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_stage_graph_matches_the_code_layout():
    stages = _dvc_yaml()
    assert list(stages) == STAGES
    lay = layout(REPO)
    rel = lambda p: str(p.relative_to(lay.root))  # noqa: E731
    assert stages["prepare"]["outs"] == [rel(lay.prepared_dir)]
    assert stages["ref-stats"]["outs"] == [rel(lay.ref_stats_path)]
    assert stages["train"]["outs"] == [rel(lay.models_dir)]
    assert stages["evaluate"]["metrics"] == [rel(lay.metrics_path)]
    assert stages["register"]["outs"] == [{rel(lay.registration_path): {"cache": False}}]
    for name, stage in stages.items():
        assert stage["cmd"] == f"ganpipe {name}"
        outs = {
            o if isinstance(o, str) else next(iter(o))
            for st in stages.values()
            for o in st.get("outs", []) + st.get("metrics", [])
        }
        for dep in stage["deps"]:
            if dep == "${data.path}":  # the user's images (DVC interpolates params.yaml)
                continue
            assert dep in outs or (REPO / dep).exists(), f"{name}: dependency {dep} is neither code nor an output"
    assert stages["train"]["params"] == list(train_stage.PARAMS)
    assert "${data.path}" in stages["prepare"]["deps"]


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


@pytest.mark.slow
def test_repro_twice_reruns_nothing_and_a_train_param_reruns_only_downstream(_reproduced_once, reproduced_project):
    dvc = [sys.executable, "-m", "dvc"]
    _, first = _reproduced_once  # the first `dvc repro` of a new project (a copy of it from here on)
    assert _ran(first) == STAGES
    project = reproduced_project
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(STAGES)

    second = run(dvc + ["repro"], project)
    assert _ran(second.stdout) == []
    assert "Data and pipelines are up to date" in second.stdout

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["lr"] = params["train"]["lr"] / 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run(dvc + ["repro"], project)
    assert _ran(third.stdout) == ["train", "evaluate", "register"]
    assert "Stage 'prepare' didn't change" in third.stdout and "Stage 'ref-stats' didn't change" in third.stdout
    assert "Data and pipelines are up to date" in run(dvc + ["status"], project).stdout


@pytest.mark.slow  # `dvc repro` processes: `make test`, not the in-process inner loop
def test_a_new_image_in_the_folder_reruns_prepare(project):
    """data.path is a dependency: DVC hashes the user's images, so adding one makes prepare stale."""
    import numpy as np
    from PIL import Image

    images = project / "images"
    for c in ("a", "b"):
        (images / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((20, 20, 3), 40 * i + (c == "b") * 7, np.uint8)).save(images / c / f"{i}.png")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(source="imagefolder", path="images", labels="folders", min_images=4)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = [sys.executable, "-m", "dvc"]
    run(dvc + ["repro", "prepare"], project)
    assert "up to date" in run(dvc + ["status", "prepare"], project).stdout
    Image.fromarray(np.zeros((20, 20, 3), np.uint8) + 99).save(images / "a" / "new.png")
    assert "images" in run(dvc + ["status", "prepare"], project).stdout  # changed dependency
    out = run(dvc + ["repro", "prepare"], project)
    assert _ran(out.stdout) == ["prepare"]
    manifest = yaml.safe_load((project / "data" / "prepared" / "manifest.json").read_text())
    assert manifest["counts"]["train"]["images"] + manifest["counts"]["test"]["images"] == 13


def test_dvc_yaml_code_deps_are_the_import_closure_of_each_stage():
    """dvc.yaml lists exactly the files each stage's code imports (tools/stage_deps.py writes them)."""
    from tools.stage_deps import STAGE_ENTRIES, rewrite, stage_code

    text = (REPO / "dvc.yaml").read_text()
    assert rewrite(text, stage_code()) == text, "run `python tools/stage_deps.py` to update dvc.yaml"
    cli = "".join((REPO / "ganpipe" / f).read_text() for f in ("cli.py", "commands.py"))
    for stage, entries in STAGE_ENTRIES.items():  # the entries are what the stage's CLI command imports
        for e in entries:
            parent, _, leaf = e.rpartition(".")
            assert f"from {e} import" in cli or f"from {parent} import {leaf}" in cli or leaf == "pyfunc_entry", e


def test_a_missing_code_dep_would_be_caught(tmp_path):
    from tools.stage_deps import rewrite, stage_code

    text = (REPO / "dvc.yaml").read_text()
    dropped = text.replace("      - ganpipe/training/losses.py\n", "", 1)
    assert dropped != text and rewrite(dropped, stage_code()) == text


# a function body edit in a module each stage runs, and which stages that leaves stale
EDITS = {
    "prepare": "ganpipe/data/decode.py",
    "ref-stats": "ganpipe/evaluation/refstats.py",
    "train": "ganpipe/training/losses.py",
    "evaluate": "ganpipe/evaluation/evaluate.py",
    "register": "ganpipe/registry/gate.py",
}


def _downstream(stage: str) -> set[str]:
    graph = {
        "prepare": {"ref-stats", "train"},
        "ref-stats": {"evaluate", "register"},
        "train": {"evaluate", "register"},
        "evaluate": {"register"},
        "register": set(),
    }
    out, todo = set(), [stage]
    while todo:
        for s in graph[todo.pop()] - out:
            out.add(s)
            todo.append(s)
    return out


def _edit_first_function(path):
    lines = path.read_text().splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if line.startswith("def "))
    while not lines[i].rstrip().endswith(":"):  # a signature over several lines
        i += 1
    lines.insert(i + 1, "    _edited = True  # noqa: F841\n")
    path.write_text("".join(lines))


@pytest.mark.slow
def test_editing_a_module_makes_the_stages_that_run_it_stale_and_nothing_upstream(reproduced_project):
    import json

    dvc = [sys.executable, "-m", "dvc"]
    project = reproduced_project
    assert run(dvc + ["status", "--json"], project).stdout.strip() in ("{}", "")
    upstream = {s: {u for u in STAGES if s in _downstream(u)} for s in STAGES}
    for stage, module in EDITS.items():
        path = project / module
        original = path.read_text()
        _edit_first_function(path)
        try:
            stale = set(json.loads(run(dvc + ["status", "--json"], project).stdout or "{}"))
            would_run = set(_ran(run(dvc + ["repro", "--dry"], project).stdout))
        finally:
            path.write_text(original)
        assert stage in stale and not stale & upstream[stage], (module, stale)
        # `dvc repro` runs it and nothing upstream; its descendants run when its outputs change (DVC's own
        # rule: test_repro_twice_... shows it for a train param)
        assert stage in would_run and not would_run & upstream[stage] and would_run <= stale | _downstream(stage)
    assert run(dvc + ["status", "--json"], project).stdout.strip() in ("{}", "")
