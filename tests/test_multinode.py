"""Several machines for one training: two `torchrun` launchers (one process each, gloo on CPU) with their
own checkouts rendezvous over c10d on loopback, as two machines would, and train with the global batch
split between them; rank 0's machine alone writes the checkpoint and logs the one MLflow run. A node that
dies fails the whole job at once; started again on both machines, the job resumes from the snapshot on
rank 0's machine, which rank 0 sends to the other (it holds none)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import copy_project, free_port, mlflow_client

pytestmark = pytest.mark.slow  # several processes training: `make test`, not `make test-fast`

LONG = 8.0  # kimg: long enough that a node is killed mid-training
TIMEOUT_S = 30  # the collectives' timeout (GANPIPE_DIST_TIMEOUT_S): the longest a survivor waits for a dead node


def _checkouts(_trained_once, tmp_path, total_kimg: float):
    """Two machines' checkouts of one project (the same params, data and code), no outputs yet."""
    import shutil

    import yaml

    _, lay = _trained_once
    out = []
    for name in ("node-a", "node-b"):
        copy = copy_project(lay.root, tmp_path / name / "project")
        shutil.rmtree(copy.models_dir)
        raw = yaml.safe_load(copy.params_path.read_text())
        raw["train"].update(total_kimg=total_kimg, snapshot_kimg=0.256, collapse_after_kimg=1000.0)
        copy.params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        out.append(copy)
    return out


def _launch(lay, port: int, job: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--nproc_per_node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            job,
            "-m",
            "ganpipe",
            "-C",
            str(lay.root),
            "train",
            *args,
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1", "GANPIPE_DIST_TIMEOUT_S": str(TIMEOUT_S)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a machine: the launcher and its worker die together
    )


def _machine_dies(launcher_pid: int) -> None:
    """SIGKILL the launcher and every process under it: torchrun starts its workers in sessions of their
    own, so killing the launcher's process group alone leaves them training (and the other node finishes)."""
    import psutil

    root = psutil.Process(launcher_pid)
    for p in [*root.children(recursive=True), root]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def test_two_nodes_rendezvous_train_and_rank_0_alone_writes(_trained_once, tmp_path):
    from ganpipe.nets.checkpoint import load_checkpoint

    nodes = _checkouts(_trained_once, tmp_path, total_kimg=1.024)
    port, job = free_port(), uuid.uuid4().hex[:8]
    launchers = [_launch(lay, port, job, "--fresh") for lay in nodes]
    outputs = [p.communicate(timeout=600)[0] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert sum(o.count("trained 1.024 kimg") for o in outputs) == 1  # rank 0 reports, rank 1 is silent
    writers = [lay for lay in nodes if lay.run_info_path.exists()]
    assert len(writers) == 1, "rank 0's machine alone writes the outputs"
    (rank0,) = writers
    ckpt = load_checkpoint(rank0.models_dir / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["nimg"] == 1024  # the global batch, split between the nodes
    client = mlflow_client(rank0.root)
    runs = client.search_runs([client.get_experiment_by_name(_trained_once[0].base.experiment).experiment_id])
    trained = [r for r in runs if r.data.tags.get("ganpipe.stage") == "train" and r.info.status == "FINISHED"]
    assert len(trained) == 2  # the session's training and this one: one run for the two nodes
    assert len(client.get_metric_history(trained[0].info.run_id, "quick_kid")) >= 1


def test_a_dead_node_fails_the_job_and_both_nodes_resume(_trained_once, tmp_path):
    """A node that dies: the other sees its connections close and fails at once (a node that hangs with its
    connections open is not handled yet: with a 30 s collectives' timeout the other still waited > 180 s)."""
    nodes = _checkouts(_trained_once, tmp_path, total_kimg=LONG)
    port, job = free_port(), uuid.uuid4().hex[:8]
    launchers = [_launch(lay, port, job, "--fresh") for lay in nodes]
    try:
        deadline = time.monotonic() + 300
        while not any(list(lay.models_dir.with_name("models.partial").glob("snapshot-*.pt"))[1:] for lay in nodes):
            assert all(p.poll() is None for p in launchers), [p.communicate()[0][-2000:] for p in launchers]
            assert time.monotonic() < deadline, "no snapshot after 300 s"
            time.sleep(0.2)
        rank0 = next(i for i, lay in enumerate(nodes) if (lay.root / "models.partial").exists())
        other = 1 - rank0
        _machine_dies(launchers[other].pid)
        killed_at = time.monotonic()
        out = launchers[rank0].communicate(timeout=180)[0]
        took = time.monotonic() - killed_at
    finally:
        for p in launchers:
            if p.poll() is None:
                _machine_dies(p.pid)
    assert launchers[rank0].returncode != 0, out[-3000:]
    assert took < TIMEOUT_S + 60, f"rank 0's node took {took:.0f} s to give up"
    assert not nodes[rank0].run_info_path.exists()  # no half-written outputs

    # the job started again on both machines resumes from rank 0's snapshot: rank 0 sends it to the other
    # machine, which holds none
    from ganpipe.nets.checkpoint import load_checkpoint

    port, job = free_port(), uuid.uuid4().hex[:8]
    again = [_launch(lay, port, job) for lay in nodes]
    outputs = [p.communicate(timeout=900)[0] for p in again]
    assert [p.returncode for p in again] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert "resuming at " in outputs[rank0] and f"trained {LONG:g} kimg (resumed at" in outputs[rank0]
    assert not (nodes[other].root / "models.partial").exists() and not nodes[other].run_info_path.exists()
    ckpt = load_checkpoint(nodes[rank0].models_dir / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["nimg"] == int(LONG * 1000)
