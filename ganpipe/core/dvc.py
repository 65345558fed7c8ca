"""DVC around the stages: the hash DVC recorded for an output, and pushing prepared data to a remote.

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

from ganpipe.core.errors import DataError

LOCAL_REMOTE = "ganpipe-local"


def default_remote_dir() -> Path:
    env = os.environ.get("GANPIPE_DVC_REMOTE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ganpipe" / "dvc-remote"


def _dvc(args: list[str], root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)


def ensure_remote(root: str | Path) -> str:
    """The default DVC remote of the project at `root`; adds the machine-local one when there is none."""
    root = Path(root)
    current = _dvc(["remote", "default"], root)
    name = current.stdout.strip()
    if current.returncode == 0 and name and "No default remote" not in name:
        return name
    remote_dir = default_remote_dir()
    remote_dir.mkdir(parents=True, exist_ok=True)
    proc = _dvc(["remote", "add", "--local", "--force", "--default", LOCAL_REMOTE, str(remote_dir)], root)
    if proc.returncode != 0:
        raise DataError(f"cannot configure the DVC remote {remote_dir}: {proc.stderr.strip()}")
    return LOCAL_REMOTE


def push(root: str | Path, targets: list[str]) -> str:
    """`dvc push` the outputs of `targets` (stages or paths) to the default remote; returns its name."""
    remote = ensure_remote(root)
    proc = _dvc(["push", "-r", remote, *targets], Path(root))
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
