"""The tree shows the pipeline: sub-packages are layers, lower layers never import higher ones, and no
module imports itself back through others. Every import counts, function-local ones too."""

from __future__ import annotations

from pathlib import Path

import pytest

import ganpipe
from tools.stage_deps import all_modules, closure, import_graph, imports_of, module_name

PACKAGE = Path(ganpipe.__file__).parent
# Lowest first. A module may import its own layer and the ones before it.
LAYERS = ("core", "data", "nets", "evaluation", "training", "registry", "serving", "studio", "orchestration")
TOP = {
    "ganpipe.cli",
    "ganpipe.commands",
    "ganpipe.warmstart",
    "ganpipe.warmserver",
    "ganpipe.__main__",
}  # the CLI may import every layer


def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE)


def layer(module: str) -> int:
    if module in TOP:
        return len(LAYERS)
    parts = module.split(".")
    assert len(parts) >= 2 and parts[1] in LAYERS, f"{module} is in no layer: put it in a sub-package of {LAYERS}"
    return LAYERS.index(parts[1])


def test_every_module_sits_in_a_layer_and_imports_only_downwards():
    upward = []
    for mod, deps in graph().items():
        if mod == "ganpipe":
            continue
        for dep in deps:
            if layer(dep) > layer(mod):
                upward.append(f"{mod} imports {dep}")
    assert upward == []


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize(
    "g, cyclic",
    [
        ({"a": {"b"}, "b": {"a"}}, True),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
    ],
)
def test_the_cycle_finder_finds_cycles(g, cyclic):
    assert (find_cycle(g) is not None) == cyclic


def test_an_upward_import_would_be_caught(tmp_path):
    modules = {"ganpipe.core.x": tmp_path / "x.py", "ganpipe.registry.gate": Path("gate.py")}
    (tmp_path / "x.py").write_text("def f():\n    from ganpipe.registry import gate\n")
    deps = imports_of(tmp_path / "x.py", modules)
    assert deps == {"ganpipe.registry.gate"} and layer("ganpipe.registry.gate") > layer("ganpipe.core.x")


def test_flows_is_not_an_installed_package(tmp_path):
    """flows/ holds deployment entry points; installing it as a top-level `flows` package would clash
    with any other project that does the same."""
    import subprocess
    import sys

    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('flows') is not None)"
    assert subprocess.run([sys.executable, "-c", code], cwd=tmp_path).returncode == 0


def test_the_code_shipped_with_a_registered_model_is_all_its_pyfunc_imports():
    """`mlflow models serve` loads the pyfunc from the code shipped in the artifact, with no ganpipe
    installed: every ganpipe module it imports (and each package's __init__) must be shipped."""
    from ganpipe.registry.packaging import ENTRY, SHIPPED_MODULES

    modules = all_modules()
    needed = closure([module_name(ENTRY)], graph()) - {module_name(ENTRY)}  # the entry ships as python_model
    shipped = {str(modules[m].relative_to(PACKAGE)) for m in needed}
    assert shipped <= set(SHIPPED_MODULES), f"missing: {sorted(shipped - set(SHIPPED_MODULES))}"
