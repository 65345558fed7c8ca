"""DVC from ganpipe: the one way to run a `dvc` command, the hash DVC recorded for an output, and
pushing prepared data to a remote.

The remote is DVC's own configuration: a default remote set in `.dvc/config` (S3, GCS, SSH, a shared
directory...) is used as it is. Without one, a machine-local default is added to `.dvc/config.local`
(not committed): a directory outside the repository, `$GANPIPE_DVC_REMOTE` or ~/.cache/ganpipe/dvc-remote.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from ganpipe.core.errors import DataError, GanpipeError
from ganpipe.core.processes import WARM_SOCKET_ENV

LOCAL_REMOTE = "ganpipe-local"


def default_remote_dir() -> Path:
    env = os.environ.get("GANPIPE_DVC_REMOTE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ganpipe" / "dvc-remote"


class DvcFailed(GanpipeError):
    """A `dvc` command exited non-zero."""


def stage_env() -> dict[str, str]:
    """The environment for DVC and the stage commands it runs: `ganpipe ...` resolves to this interpreter's."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


# `dvc` commands that run in a fork of the run's warm server (ganpipe.warmstart) when it has one, DVC already
# imported (0.2-0.6 s less each; `ganpipe run` runs ten). The fork leads a process group, and the client
# passes its signals to the whole group: a Ctrl-C or `timeout` of the run reaches the stage processes a
# `dvc repro` started, as it does cold. `dvc exp run` starts cold (its queue starts detached workers).
WARM_DVC = frozenset({"status", "remote", "push", "plots", "repro"})  # the ones ganpipe runs
WARM_DVC_EXP = frozenset({"show", "apply"})


def dvc_command(args: list[str], env: dict[str, str] | None = None) -> list[str]:
    """The command line of `dvc ARGS`: this interpreter's DVC, through the warm server when it can."""
    env = os.environ if env is None else env
    if (
        env.get(WARM_SOCKET_ENV)
        and args
        and (args[0] in WARM_DVC or (args[0] == "exp" and args[1:2] and args[1] in WARM_DVC_EXP))
    ):
        return [sys.executable, "-P", "-m", "ganpipe.warmstart", "dvc", *args]
    return [sys.executable, "-m", "dvc", *args]


def dvc(args: list[str], root: str | Path, env: dict[str, str] | None = None, capture: bool = True):
    """`dvc ARGS` in the project at `root`, with this interpreter's DVC; output captured (text) unless
    `capture` is false, when it goes to the console (a stage's own progress and errors)."""
    env = env or stage_env()
    return subprocess.run(dvc_command(args, env), cwd=root, env=env, capture_output=capture, text=True)


def check_dvc(args: list[str], root: str | Path, env: dict[str, str] | None = None, capture: bool = True):
    """`dvc(...)`, raising DvcFailed (with DVC's last words when captured) when it exits non-zero."""
    proc = dvc(args, root, env, capture)
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout or "").strip()[-500:] if capture else "see its output above"
        raise DvcFailed(f"`dvc {' '.join(args)}` exited {proc.returncode}: {said}")
    return proc


def ensure_remote(root: str | Path) -> str:
    """The default DVC remote of the project at `root`; adds the machine-local one when there is none."""
    root = Path(root)
    current = dvc(["remote", "default"], root)
    name = current.stdout.strip()
    if current.returncode == 0 and name and "No default remote" not in name:
        return name
    remote_dir = default_remote_dir()
    remote_dir.mkdir(parents=True, exist_ok=True)
    proc = dvc(["remote", "add", "--local", "--force", "--default", LOCAL_REMOTE, str(remote_dir)], root)
    if proc.returncode != 0:
        raise DataError(f"cannot configure the DVC remote {remote_dir}: {proc.stderr.strip()}")
    return LOCAL_REMOTE


def push(root: str | Path, targets: list[str]) -> str:
    """`dvc push` the outputs of `targets` (stages or paths) to the default remote; returns its name."""
    remote = ensure_remote(root)
    proc = dvc(["push", "-r", remote, *targets], root)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        raise DataError(f"dvc push to {remote!r} failed: {lines[-1]}")
    return remote


def locked_hash(root: str | Path, out: str) -> str:
    """The md5 DVC recorded in dvc.lock for output `out` (a path relative to root), or '' if none."""
    lock = Path(root) / "dvc.lock"
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    except (FileNotFoundError, yaml.YAMLError):
        return ""
    for stage in stages.values():
        for o in stage.get("outs", []):
            if o.get("path") == out:
                return str(o.get("md5", ""))
    return ""
