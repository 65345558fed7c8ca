"""DVC owns the stage graph: exact deps/params/outs, and `dvc repro` re-runs only what changed."""

from __future__ import annotations

import re
import sys

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


# What each stage's CLI command imports to do its work (ganpipe/cli.py's cmd_* functions).
STAGE_ENTRIES = {
    "prepare": ["ganpipe.data.prepare", "ganpipe.core.params", "ganpipe.core.paths"],
    "ref-stats": ["ganpipe.evaluation.refstats", "ganpipe.evaluation.features", "ganpipe.core.device"],
    "train": ["ganpipe.training.loop", "ganpipe.training.snapshots"],
    "evaluate": ["ganpipe.evaluation.evaluate"],
    "register": ["ganpipe.registry.register"],
}


def _closure(entries: list[str], g: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(entries)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += g.get(m, ())
            # importing a.b.c runs a/__init__.py and a/b/__init__.py too
            todo += [".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)]
    return seen


def test_each_stage_depends_on_all_the_code_it_imports():
    from tests.test_architecture import all_modules, graph

    modules, g = all_modules(), graph()
    stages = _dvc_yaml()
    for name, entries in STAGE_ENTRIES.items():
        deps = [REPO / d for d in stages[name]["deps"] if d.startswith("ganpipe")]
        for mod in sorted(_closure(entries, g)):
            path = modules[mod]
            if mod == "ganpipe":
                continue
            assert any(path == d or d in path.parents for d in deps), f"{name} runs {mod} but does not depend on it"
        # and the entries are those the CLI names
        cli = (REPO / "ganpipe" / "cli.py").read_text()
        assert all(f"from {e} import" in cli or f"from {e.rpartition('.')[0]} import {e.rpartition('.')[2]}" in cli
                   for e in entries), name


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


def test_repro_twice_reruns_nothing_and_a_train_param_reruns_only_downstream(project):
    dvc = [sys.executable, "-m", "dvc"]
    first = run(dvc + ["repro"], project)
    assert _ran(first.stdout) == STAGES
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
