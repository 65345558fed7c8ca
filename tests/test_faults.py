"""A dead run never blocks the next: `ganpipe run` killed mid-training (SIGKILL of the whole tree, SIGTERM
as `timeout` sends it, SIGINT as Ctrl-C does) on Prefect's temporary server, then `ganpipe run` again
trains, resuming the dead run's training; and the slot records on a real server (the test harness)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from uuid import UUID

import pytest

from tests.conftest import make_project, tiny_params_dict

TRAIN = {"total_kimg": 9.6, "snapshot_kimg": 1.6, "collapse_after_kimg": 1000.0}
RERUN_TIMEOUT_S = 420  # today's failure is a rerun that waits for ever at the train task


def _env(prefect_home: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(prefect_home)}
    env.pop("PREFECT_API_URL", None)  # Prefect's temporary server: the case that kept a dead run's slot
    return env


def _ganpipe_run(project: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ganpipe", "-C", str(project), "run", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the signal goes to the whole tree, as a shell's does
    )


def _temporary_servers(prefect_home: Path) -> list[int]:
    """Prefect API servers running on this PREFECT_HOME's database."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and b"prefect.server.api.server:create_app" in (d / "cmdline").read_bytes():
                if f"PREFECT_HOME={prefect_home}".encode() in (d / "environ").read_bytes().split(b"\0"):
                    found.append(int(d.name))
        except OSError:
            continue
    return found


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow  # killed processes and whole pipelines: `make test`, not `make test-fast`
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["SIGKILL", "SIGTERM", "SIGINT"])
def test_a_run_killed_mid_training_does_not_block_the_next_which_resumes(tmp_path, sig):
    project = make_project(tmp_path / "project", tiny_params_dict(train=TRAIN))
    home = tmp_path / "prefect-home"
    env = _env(home)
    snapshot = project / "models.partial" / "snapshot-000000001600.pt"
    first = _ganpipe_run(project, env)
    try:
        _wait(lambda: snapshot.exists() or first.poll() is not None, 600, "the first snapshot")
        assert first.poll() is None, first.communicate()[0]
        os.killpg(first.pid, sig)
        out = first.communicate(timeout=120)[0]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode != 0 and not (project / "models" / "run.json").exists(), out  # killed mid-training
    _wait(lambda: not _temporary_servers(home), 30, "the killed run's temporary server to stop")
    if sig != signal.SIGKILL:  # a run that could clean up released its slot itself
        assert not list((home / "ganpipe-slots").rglob("*.json")), out

    second = _ganpipe_run(project, env)
    try:
        out = second.communicate(timeout=RERUN_TIMEOUT_S)[0]
    except subprocess.TimeoutExpired:
        os.killpg(second.pid, signal.SIGKILL)
        pytest.fail(f"the run after a {sig.name} did not finish: {second.communicate()[0][-3000:]}")
    assert second.returncode == 0, out[-3000:]
    freed = "training slot ganpipe-train-" in out and ": freed " in out
    assert freed == (sig == signal.SIGKILL), out[-3000:]  # only a SIGKILLed run leaves its slot to be freed
    assert "resuming at " in out and "left by a training that died" in out, out[-3000:]
    info = json.loads((project / "models" / "run.json").read_text())
    assert info["resumed_from_kimg"] >= 1.6 and info["kimg"] >= TRAIN["total_kimg"]
    assert not list((home / "ganpipe-slots").rglob("*.json"))  # and the second run released its slot


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_dead_holders_lease_is_released_and_a_waiting_run_says_who_holds_the_slot(
    prefect_harness, monkeypatch, capsys
):
    from prefect.client.orchestration import get_client

    from ganpipe.orchestration import slots
    from ganpipe.orchestration.pipeline import ensure_limit

    name = f"ganpipe-test-slot-{os.getpid()}"
    ensure_limit(name)
    server, temporary = slots.server_identity()
    assert not temporary  # the harness is a server with a URL: leases are released, not counted away
    records = slots.SlotRecords(name, server)
    with get_client(sync_client=True) as client:
        # a holder that died holding the slot (its lease still alive on the server, as after a SIGKILL)
        lease = client.increment_concurrency_slots_with_lease([name], 1, "concurrency", 300).json()["lease_id"]
        path = records.add(UUID(lease), "training-pipeline/dead-run")
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "pid": _dead_pid()}))
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 1

    with slots.holding(name, 300):  # does not wait: the dead holder's lease is released first
        out = capsys.readouterr().out
        assert "freed the slot of a training that died" in out and "training-pipeline/dead-run" in out
        assert not path.exists()
        monkeypatch.setattr(slots, "NOTE_EVERY_S", 0.5)
        monkeypatch.setattr(slots, "POLL_MAX_S", 0.2)
        waited = threading.Event()

        def second() -> None:
            with slots.holding(name, 300):
                waited.set()

        t = threading.Thread(target=second, daemon=True)
        t.start()
        said = f"for the training slot {name}: held by pid {os.getpid()}"
        out = ""

        def waiting_run_said_so() -> bool:
            nonlocal out
            out += capsys.readouterr().out
            return said in out

        _wait(waiting_run_said_so, 60, "the waiting run's note")
        assert not waited.is_set()  # one training at a time: the live holder keeps the slot
    t.join(timeout=60)
    assert waited.is_set()  # released on the way out, and taken by the waiting one
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 0
        client.delete_global_concurrency_limit_by_name(name)


@pytest.mark.slow
def test_a_sweep_killed_mid_candidate_leaves_the_next_run_the_original_params(tmp_path):
    raw = tiny_params_dict(train=TRAIN, sweep={"grid": {"train.lr": [0.0001, 0.0003]}, "candidates": []})
    project = make_project(tmp_path / "project", raw)
    original = (project / "params.yaml").read_bytes()
    home = tmp_path / "prefect-home"
    env = _env(home)
    snapshot = project / "models.partial" / "snapshot-000000001600.pt"
    sweep = subprocess.Popen(
        [sys.executable, "-m", "ganpipe", "-C", str(project), "sweep"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait(lambda: snapshot.exists() or sweep.poll() is not None, 600, "the first candidate's first snapshot")
        assert sweep.poll() is None, sweep.communicate()[0]
        assert (project / "params.yaml").read_bytes() != original  # `dvc exp run -S` wrote the candidate's values
        os.killpg(sweep.pid, signal.SIGKILL)  # an OOM kill of the whole sweep
        sweep.communicate(timeout=60)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert (project / ".dvc" / "tmp" / "ganpipe-sweep.json").exists()

    rerun = _ganpipe_run(project, env)
    out = rerun.communicate(timeout=RERUN_TIMEOUT_S)[0]
    assert rerun.returncode == 0, out[-3000:]
    assert "restored params.yaml as it was before that sweep, before this run" in out
    assert (project / "params.yaml").read_bytes() == original
    assert not (project / ".dvc" / "tmp" / "ganpipe-sweep.json").exists()
    # and it trained the project's own configuration, not the candidate's (whose snapshot it did not resume)
    assert "not resuming snapshot-" in out and "params or data differ (train.lr: 0.0001 -> 0.0002)" in out


def test_a_run_is_refused_while_a_sweep_runs_and_an_unreadable_journal_is_dropped(project):
    from ganpipe.core.errors import ConfigError
    from ganpipe.core.paths import layout
    from ganpipe.orchestration import journal

    lay = layout(project)
    original = lay.params_path.read_text()
    sweeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        journal.begin(lay)
        record = json.loads(journal.journal_path(lay).read_text())
        journal.journal_path(lay).write_text(json.dumps({**record, "pid": sweeper.pid, "started": None}))
        journal.write_params(lay, original.replace("lr: 0.0002", "lr: 0.0003"))  # a candidate's values
        with pytest.raises(ConfigError, match=rf"a sweep \(pid {sweeper.pid}, started .*\) is running in"):
            journal.recover(lay, by="run")
        assert "lr: 0.0003" in lay.params_path.read_text()  # a live sweep's workspace is left alone
    finally:
        sweeper.kill()
        sweeper.wait()
    assert "restored params.yaml" in journal.recover(lay, by="run")  # now the sweep is dead
    assert lay.params_path.read_text() == original and not journal.journal_path(lay).exists()
    journal.journal_path(lay).write_text('{"params_yaml": "train: {}", "sha256": "0')  # cut short
    assert "unreadable sweep journal" in journal.recover(lay, by="sweep")
    assert lay.params_path.read_text() == original and not journal.journal_path(lay).exists()
