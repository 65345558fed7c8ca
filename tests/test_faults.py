"""Faults that cost nothing: a sweep and `ganpipe run` killed (SIGKILL of the whole tree, SIGTERM as
`timeout` sends it, SIGINT as Ctrl-C does) on Prefect's temporary server, and what the next run finds:
the original params.yaml, a free training slot, the dead run's training to resume; the slot records on a
real server (the test harness); the sweep journal."""

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
from tests.sessions import seed_prefect_home

# snapshots every 1.6 kimg, and many seconds of training after the third: each kill lands mid-training
TRAIN = {"total_kimg": 16.0, "snapshot_kimg": 1.6, "keep_snapshots": 2, "collapse_after_kimg": 1000.0}
RERUN_TIMEOUT_S = 420  # today's failure is a rerun that waits for ever at the train task


def _env(prefect_home: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(prefect_home)}
    env.pop("PREFECT_API_URL", None)  # Prefect's temporary server: the case that kept a dead run's slot
    return env


def _ganpipe_run(project: Path, env: dict) -> subprocess.Popen:
    return _ganpipe(project, env, "run")


def _ganpipe(project: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ganpipe", "-C", str(project), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the signal goes to the whole tree, as a shell's does
        preexec_fn=_interruptible,
    )


def _interruptible() -> None:
    """Ctrl-C's default action, as in a terminal: a process started in the background by a shell without
    job control (CI scripts, `make test &`) inherits SIGINT ignored, and so would every `ganpipe` it starts."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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


def _kill_at(project: Path, env: dict, nimg: int, sig: signal.Signals) -> str:
    """Start `ganpipe run`, send `sig` to its whole process tree once training has written the snapshot
    at `nimg`; its output."""
    snapshot = project / "models.partial" / f"snapshot-{nimg:012d}.pt"
    run = _ganpipe_run(project, env)
    try:
        _wait(lambda: snapshot.exists() or run.poll() is not None, RERUN_TIMEOUT_S, snapshot.name)
        assert run.poll() is None, run.communicate()[0][-3000:]
        os.killpg(run.pid, sig)
        out = run.communicate(timeout=120)[0]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode != 0 and not (project / "models" / "run.json").exists(), out[-3000:]  # mid-training
    return out


@pytest.mark.slow  # killed processes and whole pipelines: `make test`, not `make test-fast`
def test_killed_sweeps_and_runs_never_block_or_mislead_the_next_run_which_resumes(tmp_path):
    """One project, faults one after the other, each checked by the run that comes next: a sweep
    SIGKILLed mid-candidate (the next run restores params.yaml first); then SIGKILL (an OOM kill, a
    reboot), SIGTERM (`timeout`, systemd) and SIGINT (Ctrl-C) of the whole `ganpipe run` tree, each at the
    next snapshot; then a run that finishes. Each run after a killed run resumes its training; only the
    SIGKILLed run leaves its slot to be freed by the next, the others release it themselves."""
    from ganpipe.nets.checkpoint import load_checkpoint

    raw = tiny_params_dict(train=TRAIN, sweep={"grid": {"train.lr": [0.0001, 0.0003]}, "candidates": []})
    project = make_project(tmp_path / "project", raw)
    home = seed_prefect_home(tmp_path / "prefect-home")
    env = _env(home)
    params, journal = project / "params.yaml", project / ".dvc" / "tmp" / "ganpipe-sweep.json"
    original = params.read_bytes()
    sweep = _ganpipe(project, env, "sweep")
    try:  # `dvc exp run -S` writes the first candidate's values into params.yaml, then runs its stages
        _wait(lambda: params.read_bytes() != original or sweep.poll() is not None, 600, "the first candidate")
        assert sweep.poll() is None, sweep.communicate()[0]
        os.killpg(sweep.pid, signal.SIGKILL)  # an OOM kill of the whole sweep, mid-candidate
        sweep.communicate(timeout=60)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert params.read_bytes() != original and journal.exists() and not (project / "models.partial").exists()

    records = home / "ganpipe-slots"
    step = round(TRAIN["snapshot_kimg"] * 1000)
    previous = None
    for i, sig in enumerate((signal.SIGKILL, signal.SIGTERM, signal.SIGINT, None), start=1):
        if sig is not None:
            out = _kill_at(project, env, i * step, sig)
            if i == 1:  # the first run after the dead sweep
                assert "restored params.yaml as it was before that sweep, before this run" in out, out[-3000:]
                assert params.read_bytes() == original and not journal.exists()
        else:
            final = _ganpipe_run(project, env)
            try:
                out = final.communicate(timeout=RERUN_TIMEOUT_S)[0]
            except subprocess.TimeoutExpired:
                os.killpg(final.pid, signal.SIGKILL)
                pytest.fail(f"the run after a SIGINT did not finish: {final.communicate()[0][-3000:]}")
            assert final.returncode == 0, out[-3000:]
        if previous is not None:  # this run came after a killed one
            freed = "training slot ganpipe-train-" in out and ": freed " in out
            assert freed == (previous == signal.SIGKILL), out[-3000:]
            assert f"resuming at {(i - 1) * step / 1000:g} kimg" in out and "left by a training that died" in out
        _wait(lambda: not _temporary_servers(home), 30, "the run's temporary server to stop")
        if sig != signal.SIGKILL:  # a run that could clean up released its slot itself
            assert not list(records.rglob("*.json")), out[-3000:]
        previous = sig
    info = json.loads((project / "models" / "run.json").read_text())
    assert info["resumed_from_kimg"] == 3 * step / 1000 and info["kimg"] >= TRAIN["total_kimg"]
    # it trained the project's own configuration, not the dead sweep's candidate's
    assert load_checkpoint(project / "models" / "checkpoint.pt")["params"]["train"]["lr"] == raw["train"]["lr"]
    assert params.read_bytes() == original


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.slow  # a Prefect server (the harness): `make test`
def test_a_dead_holders_lease_is_released_and_a_waiting_run_says_who_holds_the_slot(
    prefect_harness, monkeypatch, capsys
):
    from prefect.client.orchestration import get_client

    from ganpipe.core import leases
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
        monkeypatch.setattr(leases, "RETRY_MAX_S", 0.2)
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


@pytest.mark.slow  # starts ganpipe's temporary Prefect server (20 s): `make test`
def test_the_lease_is_renewed_on_ganpipes_temporary_server(monkeypatch, capsys):
    """The renewal runs in a thread: it must talk to the server that granted the lease (a plain thread
    lost the temporary server's URL and renewed against a temporary server of Prefect's own: 410 Gone)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ganpipe.core import leases
    from ganpipe.orchestration import slots
    from ganpipe.orchestration.pipeline import ensure_limit
    from ganpipe.orchestration.tempserver import prefect_api

    monkeypatch.setattr(leases, "RENEW_AT", 0.02)  # every 1.2 s of a 60 s lease
    name = f"ganpipe-test-renew-{os.getpid()}"
    with temporary_settings(updates={PREFECT_API_URL: None}), prefect_api() as url:
        assert url and slots.server_identity()[1]  # ganpipe's own temporary server
        ensure_limit(name)
        with slots.holding(name, 60) as held:
            _wait(lambda: held.renewed >= 2, 60, "two renewals")
    assert "renewing lease" not in capsys.readouterr().out


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
