"""Two pipelines finishing at once against one MLflow store: one decision at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ganpipe.evaluation.evaluate import evaluate
from ganpipe.nets.checkpoint import load_checkpoint, save_checkpoint
from ganpipe.registry.aliases import history
from tests.conftest import build_trained, last_conv_key, mlflow_client

pytestmark = pytest.mark.slow  # whole pipelines, servers or killed processes: `make test`, not `make test-fast`


def test_two_registrations_at_once_leave_the_better_model_as_the_only_champion(tmp_path, monkeypatch):
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared)  # both projects track into one store
    (pa, la), (pb, lb) = build_trained(tmp_path / "a"), build_trained(tmp_path / "b")
    ckpt = load_checkpoint(lb.checkpoint_path)  # b: the same model with its output layer damped
    key = last_conv_key(ckpt["G_ema"])
    ckpt["G_ema"][key] = ckpt["G_ema"][key] * 0.02  # low-contrast images (the tanh output saturates)
    save_checkpoint(lb.checkpoint_path, {k: v for k, v in ckpt.items() if k != "format_version"})
    for p, lay in ((pa, la), (pb, lb)):
        evaluate(p.eval, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)

    env = {**os.environ, "MLFLOW_TRACKING_URI": shared}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ganpipe", "-C", str(lay.root), "register"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for lay in (la, lb)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    client = mlflow_client(tmp_path)
    name, alias = pa.registry.model_name, pa.registry.alias
    champion = client.get_model_version_by_alias(name, alias)
    run_a = json.loads(la.run_info_path.read_text())["mlflow_run_id"]
    assert champion.tags["mlflow_run_id"] == run_a  # the better model won
    moves = [m for m in history(client, name) if m["alias"] == alias]
    assert sum(m["from"] is None for m in moves) == 1  # only one "first version"
    decisions = sorted(v.tags["gate.decision"] for v in client.search_model_versions(f"name='{name}'"))
    assert len(decisions) == 2 and decisions.count("promoted") >= 1


def test_a_registration_waits_while_another_process_holds_the_registry_lock(trained_project, tmp_path):
    from ganpipe.core.tracking import tracking_uri

    p, lay = trained_project
    evaluate(p.eval, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)
    uri, name = tracking_uri(lay.root), p.registry.model_name
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom ganpipe.core.locking import registry_lock\n"
            f"with registry_lock({uri!r}, {name!r}):\n    print('locked', flush=True)\n    sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    register = subprocess.Popen(
        [sys.executable, "-m", "ganpipe", "-C", str(lay.root), "register"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        waited = ""  # what register printed up to the moment it found the lock taken
        while "waiting for the registry lock" not in waited:
            line = register.stdout.readline()
            assert line, f"register ended without waiting for the lock:\n{waited}"
            waited += line
        client = mlflow_client(lay.root)
        assert register.poll() is None, "register finished while another process held the lock"
        run_id = json.loads(lay.run_info_path.read_text())["mlflow_run_id"]
        assert not [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get("mlflow_run_id") == run_id]
    finally:
        holder.communicate("go\n", timeout=30)
    out = register.communicate(timeout=300)[0]
    assert register.returncode == 0, out
