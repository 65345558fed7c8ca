"""Stage commands started warm (ganpipe/warmstart.py): the stage runs in a fork of the warm server, as it
would cold (outputs, output streams, exit code), signals reach it, a killed client takes its fork with
it, changed code starts cold; and the fast exit of `ganpipe` processes keeps what a normal exit does."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from ganpipe.warmserver import PRELOAD, _changed, _source_stamps
from ganpipe.warmstart import SOCKET_ENV, SWITCH_ENV
from tests.conftest import tiny_params_dict


def warm_server_process() -> psutil.Process:
    """This test process's warm server (tests/conftest.py starts one per test process)."""
    assert os.environ.get(SOCKET_ENV), "the session's warm server is not running"
    (server,) = [p for p in psutil.Process().children() if "ganpipe.warmserver" in " ".join(p.cmdline())]
    return server


def forks_in(server: psutil.Process, cwd: Path) -> list[psutil.Process]:
    found = []
    for p in server.children():
        try:
            if Path(p.cwd()) == cwd:
                found.append(p)
        except psutil.Error:
            pass
    return found


def wait_until(condition, timeout_s: float = 120, what: str = "the condition"):
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


def ganpipe(args: list[str], cwd: Path, warm: bool = True, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **({} if warm else {SWITCH_ENV: "0"}), **extra_env}
    return subprocess.run(["ganpipe", *args], cwd=cwd, env=env, capture_output=True, text=True)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(root.rglob("*"))
        if f.is_file()
    }


@pytest.mark.slow
def test_a_stage_started_warm_does_what_it_does_cold(project):
    cold = ganpipe(["prepare"], project, warm=False)
    assert cold.returncode == 0, cold.stderr
    cold_outputs = tree_digest(project / "data" / "prepared")
    (project / "data" / "prepared").rename(project / "cold-prepared")
    warm = ganpipe(["prepare"], project)
    assert warm.returncode == 0, warm.stderr
    assert tree_digest(project / "data" / "prepared") == cold_outputs
    assert warm.stdout == cold.stdout and warm.stdout.strip()
    # torch reads its thread count once, when it loads: a client asking for another one starts cold
    threads = str(int(os.environ.get("OMP_NUM_THREADS", "1")) + 1)
    other = ganpipe(["prepare"], project, OMP_NUM_THREADS=threads)
    assert other.returncode == 0 and other.stdout == cold.stdout, other.stderr
    assert "ganpipe: starting cold: OMP_NUM_THREADS differs from the warm-start server's" in other.stderr
    # the same error line and exit code for bad params, on the client's own stderr
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["total_kimg"] = -1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    bad_cold, bad_warm = ganpipe(["train"], project, warm=False), ganpipe(["train"], project)
    assert bad_warm.returncode == bad_cold.returncode == 2
    assert bad_warm.stderr == bad_cold.stderr and "total_kimg" in bad_warm.stderr


def _long_training(project: Path) -> None:
    raw = tiny_params_dict(train={"total_kimg": 500.0, "snapshot_kimg": 250.0})
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert ganpipe(["prepare"], project).returncode == 0


def _start_training(project: Path) -> tuple[subprocess.Popen, psutil.Process]:
    """A warm `ganpipe train` and the fork that runs it, once training has started."""
    client = subprocess.Popen(["ganpipe", "train"], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    server = warm_server_process()
    (fork,) = wait_until(lambda: forks_in(server, project), what="the fork of `ganpipe train`")
    # the client never imports torch: the work happens in the fork
    assert "torch" not in Path(f"/proc/{client.pid}/maps").read_text()
    assert client.poll() is None, client.stdout.read()
    return client, fork


@pytest.mark.slow
def test_a_signal_to_the_client_reaches_the_fork_and_the_client_ends_as_it_did(project):
    _long_training(project)
    client, fork = _start_training(project)
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=60) == -signal.SIGTERM  # as a cold `ganpipe train` killed by SIGTERM
    wait_until(lambda: not fork.is_running() or fork.status() == psutil.STATUS_ZOMBIE, what="the fork to end")


@pytest.mark.slow
def test_a_killed_client_takes_its_fork_with_it(project):
    _long_training(project)
    client, fork = _start_training(project)
    client.kill()
    client.wait(timeout=60)
    wait_until(lambda: not fork.is_running() or fork.status() == psutil.STATUS_ZOMBIE, what="the fork to die")


def test_changed_code_is_noticed(tmp_path):
    f = tmp_path / "module.py"
    f.write_text("x = 1\n")
    stamps = {str(f): (f.stat().st_mtime_ns, f.stat().st_size)}
    assert _changed(stamps) is None
    f.write_text("x = 22\n")
    assert _changed(stamps) == str(f)
    f.unlink()
    assert _changed(stamps) == str(f)
    # the server stamps the ganpipe modules it imported, nothing else
    assert all("/ganpipe/" in path for path in _source_stamps())
    assert any(path.endswith("warmserver.py") for path in _source_stamps())


@pytest.mark.slow
def test_the_servers_imports_leave_it_safe_to_fork_and_prefect_unread():
    """No Python thread but the main one (a fork copies only the forking thread: a lock another thread
    held would stay locked in every fork), CUDA untouched, Prefect not imported (it reads its settings,
    PREFECT_API_URL among them, at import: a fork would keep the server's), and a fork computes with
    torch's thread pool (OpenMP's workers, which torch's import starts, are not copied)."""
    code = f"""
        import os, sys, threading
        for name in {PRELOAD!r}:
            __import__(name)
        import torch
        print(threading.active_count(), "prefect" in sys.modules, torch.cuda.is_initialized(), flush=True)
        pid = os.fork()
        if pid == 0:
            torch.set_num_threads(2)
            y = torch.nn.functional.conv2d(torch.randn(8, 16, 64, 64), torch.randn(16, 16, 3, 3))
            print(tuple(y.shape), flush=True)
            os._exit(0)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # as a user's `ganpipe run` has it
    out = subprocess.run(
        [sys.executable, "-P", "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.stdout.split("\n") == ["1 False False", "(8, 16, 62, 62)", "0", ""], out.stderr[-2000:]


def test_the_fast_exit_keeps_what_a_normal_exit_does():
    """exit_now: the code, output still buffered, exit handlers, and a non-daemon thread's work."""
    code = """
        import atexit, sys, threading, time
        from ganpipe.core.processes import exit_now
        atexit.register(lambda: print("handler"))
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread", end=" "))).start()
        sys.stdout.write("buffered ")
        exit_now(3)
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert proc.returncode == 3
    assert proc.stdout == "buffered thread handler\n"


@pytest.mark.slow  # git + DVC project, DVC processes
def test_dvc_commands_run_warm_and_say_what_they_say_cold(project):
    from ganpipe.core.dvc import dvc_command

    for args in (["status", "--json"], ["remote", "list"], ["status", "--no-such-flag"], ["exp", "show", "--json"]):
        cold = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True)
        cmd = dvc_command(args)
        assert cmd[1:5] == ["-P", "-m", "ganpipe.warmstart", "dvc"], cmd
        warm = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
        assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr), args
    # it went through the server: one that cannot take it (another thread count) says so, and DVC runs here
    threads = str(int(os.environ.get("OMP_NUM_THREADS", "1")) + 1)
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    other = subprocess.run(dvc_command(["status"]), cwd=project, capture_output=True, text=True, env=env)
    assert other.returncode == 0 and "ganpipe: starting cold: OMP_NUM_THREADS differs" in other.stderr
    # `dvc exp run` starts cold (its queue starts detached workers), and everything does without a server
    assert dvc_command(["exp", "run", "--run-all"])[1:3] == ["-m", "dvc"]
    assert dvc_command(["status"], env={})[1:3] == ["-m", "dvc"]


@pytest.mark.slow  # a warm `dvc repro` training
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_signal_to_a_warm_dvc_repro_reaches_the_stage_it_started(project, sig):
    """`dvc repro` in a fork of the warm server: the stage it starts (`ganpipe train`, warm too, in a fork of
    its own) gets the signal the client gets, as a cold one in the caller's process group does, and a killed
    client takes all of it along (nothing trains on, orphaned)."""
    from ganpipe.core.dvc import dvc_command, stage_env

    _long_training(project)
    env = stage_env()
    cmd = dvc_command(["repro", "--single-item", "train"], env)
    assert "ganpipe.warmstart" in cmd
    client = subprocess.Popen(
        cmd,
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )
    server = warm_server_process()
    # the fork running DVC and the fork running the `ganpipe train` that DVC started, training
    forks = wait_until(lambda: len(found := forks_in(server, project)) >= 2 and found, what="both forks")
    wait_until(lambda: list(project.glob("mlruns*")) or (project / "mlflow.db").exists(), what="the training")
    tree = [p for f in forks for p in [f, *f.children(recursive=True)]]
    assert any("ganpipe" in " ".join(p.cmdline()) and "train" in p.cmdline() for p in tree)  # DVC's stage command
    client.send_signal(sig)
    assert client.wait(timeout=120) != 0
    ended = lambda p: not p.is_running() or p.status() == psutil.STATUS_ZOMBIE  # noqa: E731
    wait_until(lambda: all(ended(p) for p in tree), what="every process of the repro to end")
