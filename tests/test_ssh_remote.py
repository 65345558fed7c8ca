"""Data between machines: the prepared data pushed by the flow to a DVC remote over SSH (OpenSSH's sshd on
loopback, `dvc-ssh`), pulled byte-identical by a second checkout that has only git and the remote."""

from __future__ import annotations

import os
import sys

import pytest

from tests.conftest import make_project, run, tiny_params_dict
from tests.servers import ssh_server

pytestmark = pytest.mark.slow  # a server and a whole pipeline: `make test`, not `make test-fast`


def _machine(home, monkeypatch) -> None:
    """A machine's user: an empty ~/.ssh, so only the key configured for the remote can log in."""
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HOME", str(home))


def test_the_flow_pushes_to_an_ssh_remote_and_another_checkout_pulls_the_same_bytes(
    tmp_path, prefect_harness, monkeypatch
):
    from ganpipe.orchestration.pipeline import training_pipeline

    with ssh_server(tmp_path / "sshd") as (port, key):
        _machine(tmp_path / "home", monkeypatch)
        monkeypatch.delenv("GANPIPE_DVC_REMOTE", raising=False)
        store = tmp_path / "team-remote"  # the remote's directory on the SSH server
        project = make_project(tmp_path / "machine-a" / "project", tiny_params_dict())
        dvc = [sys.executable, "-m", "dvc"]
        run([*dvc, "remote", "add", "-d", "team", f"ssh://127.0.0.1:{port}{store}"], project)
        run([*dvc, "remote", "modify", "--local", "team", "user", os.environ.get("USER", "root")], project)
        run([*dvc, "remote", "modify", "--local", "team", "keyfile", str(key)], project)
        git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
        run(git + ["commit", "-q", "-am", "the team's remote"], project)

        result = training_pipeline(project_dir=str(project))
        assert result["promoted"] and result["stage_seconds"]["dvc push"] > 0
        assert any(p.is_file() for p in store.rglob("*")), "nothing arrived on the SSH remote"

        run(git + ["add", "-A"], project)
        run(git + ["commit", "-q", "-m", "pipeline run"], project)
        clone = tmp_path / "machine-b" / "project"
        run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
        run([*dvc, "remote", "modify", "--local", "team", "user", os.environ.get("USER", "root")], clone)
        run([*dvc, "remote", "modify", "--local", "team", "keyfile", str(key)], clone)
        pulled = run([*dvc, "pull", "prepare"], clone)
        assert "team" not in pulled.stderr or "ERROR" not in pulled.stderr
        prepared = sorted(p.relative_to(project) for p in (project / "data" / "prepared").rglob("*") if p.is_file())
        assert prepared
        for rel in prepared:
            assert (clone / rel).read_bytes() == (project / rel).read_bytes(), rel

        # the server checks who logs in: a machine without the team's key cannot pull
        other = tmp_path / "machine-c" / "project"
        run(["git", "clone", "-q", str(project), str(other)], tmp_path)
        run([*dvc, "remote", "modify", "--local", "team", "user", os.environ.get("USER", "root")], other)
        _machine(tmp_path / "home-c", monkeypatch)
        refused = run([*dvc, "pull", "prepare"], other, check=False)
        assert refused.returncode != 0 and not (other / "data" / "prepared" / "manifest.json").exists()
