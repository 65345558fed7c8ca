"""The registry lock across machines: two project checkouts in separate directories with separate ganpipe
caches (no lock file in common, as on two machines), pointed at one tracking store, finish registration
at the same moment. The lock they share (a Prefect global concurrency limit on the team's Prefect server,
or a PostgreSQL advisory lock on a PostgreSQL store) makes the decisions one after the other: the second
is compared with the champion the first left."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.slow  # servers and concurrent processes: `make test`, not `make test-fast`


def _checkout(directory, tracking_uri: str, monkeypatch):
    """A trained, evaluated project whose runs live in the shared store."""
    from ganpipe.evaluation.evaluate import evaluate
    from tests.conftest import build_trained

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    p, lay = build_trained(directory)
    evaluate(p.eval, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)
    return p, lay


class _Register:
    """`ganpipe register` of one checkout in its own process, its output collected line by line."""

    def __init__(self, lay, env: dict):
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ganpipe", "-C", str(lay.root), "register"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    def says(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def finish(self) -> str:
        assert self.proc.wait(timeout=300) == 0, "".join(self.lines)[-3000:]
        self.reader.join(10)
        return "".join(self.lines)


def _wait(condition, what: str, procs, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        for r in procs:
            if r.proc.poll() is not None:
                pytest.fail(f"`ganpipe register` ended while waiting for {what}:\n{''.join(r.lines)[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _race(p, checkouts, tracking_uri: str, extra_env: dict, tmp_path) -> list[dict]:
    """Hold the team's lock here, start both registrations, let go once both wait for it; their results."""
    from ganpipe.core.io import read_json
    from ganpipe.core.locking import registry_lock

    procs = []
    with registry_lock(tracking_uri, p.registry.model_name) as kind:
        assert kind in ("prefect", "postgres")
        for i, lay in enumerate(checkouts):
            env = {**os.environ, **extra_env, "MLFLOW_TRACKING_URI": tracking_uri}
            env = {k: v for k, v in env.items() if v is not None}  # None: unset
            env["GANPIPE_CACHE_DIR"] = str(tmp_path / f"cache-{i}")  # nothing on disk in common
            procs.append(_Register(lay, env))
        _wait(lambda: all(r.says("waiting for the registry lock") for r in procs), "both to wait", procs)
    outputs = [r.finish() for r in procs]
    assert all("registered ganpipe-generator v" in out for out in outputs), outputs
    return [read_json(lay.registration_path, "register") for lay in checkouts]


def _one_after_the_other(results: list[dict]) -> None:
    first, second = sorted(results, key=lambda r: int(r["version"]))
    assert (first["version"], second["version"]) == ("1", "2")
    assert first["promoted"] and first["previous_champion"] is None and first["reason"].startswith("first version")
    # the second decision saw the first's champion: compared with it, not a second "first version"
    assert second["previous_champion"] == "1" and second["champion_metrics"] is not None
    assert second["interval"] is not None and not second["reason"].startswith("first version")


def test_two_checkouts_on_one_prefect_server_register_one_after_the_other(
    prefect_harness, mlflow_server, tmp_path, monkeypatch
):
    from prefect.settings import PREFECT_API_URL

    uri, _ = mlflow_server
    checkouts = [_checkout(tmp_path / f"machine-{i}" / "project", uri, monkeypatch) for i in range(2)]
    p = checkouts[0][0]
    results = _race(p, [lay for _, lay in checkouts], uri, {"PREFECT_API_URL": PREFECT_API_URL.value()}, tmp_path)
    _one_after_the_other(results)


def test_two_checkouts_on_one_postgresql_store_register_one_after_the_other(tmp_path, monkeypatch):
    from tests.servers import postgres

    with postgres(("mlflow",)) as pg:
        uri = f"postgresql://postgres@{pg}/mlflow"
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
        monkeypatch.chdir(tmp_path)  # a database store keeps artifacts in ./mlruns of where it is first used
        checkouts = [_checkout(tmp_path / f"machine-{i}" / "project", uri, monkeypatch) for i in range(2)]
        p = checkouts[0][0]
        env = {"PREFECT_API_URL": None}  # no Prefect server: the advisory lock alone
        _one_after_the_other(_race(p, [lay for _, lay in checkouts], uri, env, tmp_path))
