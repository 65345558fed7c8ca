"""Sweeps: candidate configurations from `sweep:` in params.yaml, and the choice of the best one.

A candidate is a set of `section.key=value` overrides of params.yaml, as `dvc exp run -S` takes them:
`sweep.grid` gives every combination of its value lists, `sweep.candidates` an explicit list (both may
be used; duplicates count once). Every candidate is validated as a whole params file before anything
runs, so a typo fails the sweep at once with the key path, not after hours of training.
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

from ganpipe.core.errors import ConfigError
from ganpipe.core.metric_keys import is_better
from ganpipe.core.params import Params, SweepParams, SweepValue, parse_params


def candidates(sp: SweepParams) -> list[dict[str, SweepValue]]:
    """The overrides of each candidate, grid combinations first, in a stable order, without duplicates."""
    keys = list(sp.grid)
    found: list[dict[str, SweepValue]] = []
    for values in itertools.product(*(sp.grid[k] for k in keys)) if keys else []:
        found.append(dict(zip(keys, values)))
    found += [dict(c) for c in sp.candidates]
    unique, seen = [], set()
    for c in found:
        key = json.dumps(c, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def apply(raw: dict, overrides: dict[str, SweepValue]) -> dict:
    """params.yaml's mapping with `section.key` (or `section.sub.key`) overrides applied."""
    out = copy.deepcopy(raw)
    for path, value in overrides.items():
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"sweep: {path!r} is not a params.yaml key")
            node = node[part]
        if leaf not in node:
            raise ConfigError(f"sweep: {path!r} is not a params.yaml key")
        node[leaf] = value
    return out


def validate(raw: dict, found: list[dict[str, SweepValue]]) -> list[Params]:
    """Each candidate's full params; ConfigError naming the candidate and the problem."""
    if not found:
        raise ConfigError("sweep: no candidates (set sweep.grid or sweep.candidates in params.yaml)")
    out = []
    for i, c in enumerate(found):
        for key in c:
            if key.split(".")[0] == "sweep":
                raise ConfigError(f"sweep: candidate {i + 1} sets {key!r}; a sweep cannot sweep itself")
        out.append(parse_params(apply(raw, c), f"sweep candidate {i + 1} {c}"))
    return out


def overrides_args(c: dict[str, SweepValue]) -> list[str]:
    """`-S key=value` arguments of `dvc exp run` (values in YAML syntax, as DVC parses them)."""
    args = []
    for k, v in c.items():
        args += ["-S", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
    return args


def scores_from_exp_show(shown: object, names: list[str], metrics_path: str) -> dict[str, dict]:
    """`dvc exp show --json` -> {experiment name: metrics of `metrics_path`} for the named experiments
    (the JSON nests experiments under their baseline commit; this walks it whole)."""
    found: dict[str, dict] = {}

    def walk(node: object) -> None:
        if isinstance(node, dict):
            name, data = node.get("name"), node.get("data")
            if name in names and isinstance(data, dict):
                metrics = (data.get("metrics") or {}).get(metrics_path) or {}
                if isinstance(metrics.get("data"), dict):
                    found[name] = metrics["data"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(shown)
    return found


def best(results: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The result with the best `metric` (direction from the metric registry); ties: the first."""
    scored = [r for r in results if r.get("scores", {}).get(metric) is not None]
    if not scored:
        raise ConfigError(f"sweep: no candidate has a {metric!r} score")
    winner = scored[0]
    for r in scored[1:]:
        if is_better(metric, r["scores"][metric], winner["scores"][metric]):
            winner = r
    return winner
