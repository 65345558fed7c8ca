"""The code each DVC stage runs, computed from the imports of its entry points: `dvc.yaml`'s code deps
are written by this script, so `dvc status` marks a stage stale exactly when code it runs changed.

    python tools/stage_deps.py          # rewrite the ganpipe/ deps of every stage in dvc.yaml
    python tools/stage_deps.py --check  # exit 1 naming the differences (tests/test_dvc.py runs the check)

Every import counts, function-local ones too; importing `a.b.c` runs `a/__init__.py` and `a/b/__init__.py`.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ganpipe"
# What each stage's CLI command (ganpipe/commands.py's cmd_* functions) imports to do its work.
STAGE_ENTRIES = {
    "prepare": ["ganpipe.data.prepare", "ganpipe.core.params", "ganpipe.core.paths"],
    "ref-stats": ["ganpipe.evaluation.refstats", "ganpipe.evaluation.features", "ganpipe.core.device"],
    "train": ["ganpipe.training.loop", "ganpipe.training.snapshots"],
    "evaluate": ["ganpipe.evaluation.evaluate"],
    "register": ["ganpipe.registry.register", "ganpipe.serving.pyfunc_entry"],  # + the pyfunc it ships
}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, package): p for p in package.rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The ganpipe modules `path` imports (`from ganpipe.x import y` counts y when y is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "ganpipe"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ganpipe":
            if node.level:
                raise ValueError(f"{path}: relative import")
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m != "ganpipe"}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = all_modules(package)
    return {m: imports_of(p, modules) for m, p in modules.items()}


def closure(entries: list[str], graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(entries)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph.get(m, ())
            todo += [".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)]
    return seen


def stage_code(root: Path = ROOT) -> dict[str, list[str]]:
    """Each stage's code deps: the files of its entries' import closure, relative to `root`, sorted."""
    package = root / "ganpipe"
    modules, graph = all_modules(package), import_graph(package)
    return {
        stage: sorted(str(modules[m].relative_to(root)) for m in closure(entries, graph))
        for stage, entries in STAGE_ENTRIES.items()
    }


_DEP = re.compile(r"^      - ganpipe/\S+\s*$")


def rewrite(text: str, code: dict[str, list[str]]) -> str:
    """dvc.yaml's text with each stage's `ganpipe/...` deps replaced by `code[stage]`, after its other deps."""
    out, stage, pending = [], None, None
    for line in text.splitlines():
        if m := re.match(r"^  ([\w-]+):\s*$", line):
            stage = m.group(1)
        if _DEP.match(line):
            continue
        if pending is not None and not line.startswith("      - "):
            out += [f"      - {f}" for f in pending]
            pending = None
        out.append(line)
        if line.strip() == "deps:" and stage in code:
            pending = code[stage]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml differs from the imports")
    args = ap.parse_args()
    path = ROOT / "dvc.yaml"
    text = path.read_text()
    new = rewrite(text, stage_code())
    if args.check:
        if new != text:
            print("dvc.yaml's code deps differ from the imports; run `python tools/stage_deps.py`", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
