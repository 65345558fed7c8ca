"""Strict params: each kind of bad value is named with its key path, value and what is allowed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from ganpipe.core.errors import ConfigError
from ganpipe.core.params import load_params, parse_params
from tests.conftest import REPO, shipped_params


def test_shipped_params_load_and_cover_every_stage_section():
    p = load_params(REPO / "params.yaml")
    assert set(type(p).model_fields) == {
        "base",
        "data",
        "model",
        "train",
        "eval",
        "registry",
        "serve",
        "schedule",
        "sweep",
    }
    assert p.data.source == "digits" and p.registry.alias == "champion"


def _error(raw) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_params(raw, "params.yaml")
    return str(exc.value)


def test_unknown_key_names_path_and_allowed_keys():
    raw = shipped_params()
    raw["train"]["lrr"] = 0.1
    msg = _error(raw)
    assert "unknown key 'train.lrr'" in msg
    assert "lr" in msg.split("allowed:")[1] and "batch_size" in msg


def test_unknown_section_is_rejected():
    raw = shipped_params()
    raw["trian"] = {"lr": 0.1}
    assert "unknown key 'trian'" in _error(raw)


def test_missing_key_is_named():
    raw = shipped_params()
    del raw["eval"]["num_fake"]
    assert "missing key 'eval.num_fake'" in _error(raw)


@pytest.mark.parametrize(
    "section,key,value,expect",
    [
        ("train", "lr", "fast", "train.lr = 'fast'"),
        ("train", "batch_size", 64.5, "train.batch_size = 64.5"),
        ("train", "batch_size", True, "train.batch_size = True"),  # YAML `yes` is not a batch size
        ("base", "seed", "0", "base.seed = '0'"),  # strings are not coerced to ints
        ("eval", "metrics", "fid", "eval.metrics = 'fid'"),
    ],
)
def test_wrong_type_names_key_and_value(section, key, value, expect):
    raw = shipped_params()
    raw[section][key] = value
    assert expect in _error(raw)


@pytest.mark.parametrize(
    "section,key,value,allowed",
    [
        ("train", "lr", -0.1, "greater than 0"),
        ("data", "resolution", 48, "power of two"),
        ("data", "resolution", 4, "greater than or equal to 8"),
        ("data", "test_fraction", 1.0, "less than 1"),
        ("base", "device", "gpu", "should match pattern"),
        ("model", "arch", "stylegan9", "'dcgan'"),
    ],
)
def test_out_of_range_says_what_is_allowed(section, key, value, allowed):
    raw = shipped_params()
    raw[section][key] = value
    msg = _error(raw)
    assert f"{section}.{key} = {value!r}" in msg and allowed in msg


def test_a_crash_window_shorter_than_a_heartbeat_is_refused_naming_both_keys():
    raw = shipped_params()
    raw["schedule"].update(heartbeat_s=120, crashed_after_s=200)
    assert _error(raw) == (
        "params.yaml: schedule: crashed_after_s (200) must be at least twice heartbeat_s (120): "
        "one late heartbeat would mark a live run Crashed"
    )


def test_unknown_metric_lists_the_valid_ones():
    raw = shipped_params()
    raw["eval"]["metrics"] = ["fid", "isc"]
    assert "unknown metric 'isc' (valid: fid, kid, is, pr, dc, memorization)" in _error(raw)
    raw = shipped_params()
    raw["registry"]["gate"]["guard_metrics"] = ["recall", "f_score"]
    assert "registry.gate.guard_metrics" in _error(raw) and "unknown metric key 'f_score'" in _error(raw)


def test_every_problem_is_reported_at_once():
    raw = shipped_params()
    raw["train"]["lr"] = -1.0
    del raw["eval"]["seed"]
    msg = _error(raw)
    assert "train.lr" in msg and "eval.seed" in msg


def test_not_a_mapping_and_bad_yaml(tmp_path):
    assert "expected a mapping" in _error(["base"])
    bad = tmp_path / "params.yaml"
    bad.write_text("base: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "missing.yaml")


# One command in a real `python -m ganpipe` process (the entry point, exit status and stderr of a
# process); the others in this one, without seconds of imports each.
@pytest.mark.parametrize("command, real_process", [("prepare", True), ("train", False), ("evaluate", False)])
def test_cli_prints_one_line_and_exits_2(tmp_path, command, real_process, run_cli):
    raw = shipped_params()
    raw["train"]["lr"] = "fast"
    raw["data"]["resolution"] = 48
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    if real_process:
        proc = subprocess.run(
            [sys.executable, "-m", "ganpipe", "-C", str(tmp_path), command], capture_output=True, text=True
        )
        code, err = proc.returncode, proc.stderr
    else:
        code, _, err = run_cli("-C", tmp_path, command)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ganpipe: error: ") and "Traceback" not in err
    assert "train.lr = 'fast'" in lines[0] and "data.resolution = 48" in lines[0]
