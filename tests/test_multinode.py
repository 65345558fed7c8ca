"""Several machines for one training: two `torchrun` launchers (one process each, gloo on CPU) with their
own checkouts rendezvous over c10d on loopback, as two machines would, and train with the global batch
split between them; rank 0's machine alone writes the checkpoint and logs the one MLflow run. A node that
dies fails the whole job at once; the flow's retry and the other machine started again resume from the
snapshot on rank 0's machine, which rank 0 sends to the other (it holds none)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.conftest import copy_project, free_port, mlflow_client
from tests.sessions import seed_prefect_home

pytestmark = pytest.mark.slow  # several processes training: `make test`, not `make test-fast`

LONG = 8.0  # kimg: long enough that a node is killed mid-training
TRAIN_LONG = {"total_kimg": LONG, "snapshot_kimg": 0.256, "collapse_after_kimg": 1000.0}
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
        raw["train"].update({**TRAIN_LONG, "total_kimg": total_kimg})
        copy.params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        out.append(copy)
    return out


NODES = ["--nnodes", "2", "--nproc-per-node", "1"]


def _c10d(port: int, job: str) -> list[str]:
    return [*NODES, "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", job]


def _node_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "GANPIPE_DIST_TIMEOUT_S": str(TIMEOUT_S)}


def _launch(lay, rendezvous: list[str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *rendezvous, "-m", "ganpipe", "-C", str(lay.root), "train"]
        + list(args),
        env=_node_env(),
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
    launchers = [_launch(lay, _c10d(port, job), "--fresh") for lay in nodes]
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


def test_a_dead_node_fails_the_flows_training_and_its_retry_resumes_on_both_nodes(
    _trained_once, reproduced_project, tmp_path
):
    """The flow (`ganpipe run`) on node 0 trains under torchrun ($GANPIPE_TORCHRUN, static rendezvous: the
    flow's machine is rank 0 and holds the snapshots); node 1 runs its launcher. Node 1 dies: node 0's
    training fails at once (gloo sees its connections close; a node that hangs with its connections open
    is not handled yet), the flow's train task is retried, node 1 is started again, and the job resumes
    from node 0's snapshot on both nodes; the flow goes on to evaluate and register."""
    import yaml

    from ganpipe.core.paths import layout
    from ganpipe.nets.checkpoint import load_checkpoint
    from ganpipe.training.distributed import LAUNCH_ENV

    # node 0: a git + DVC project after `dvc repro` (v1 registered), now with a longer training; node 1:
    # a checkout with the same params and data
    node_0 = layout(reproduced_project)
    raw = yaml.safe_load(node_0.params_path.read_text())
    raw["train"].update(TRAIN_LONG)
    node_0.params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    nodes = [node_0, _checkouts(_trained_once, tmp_path, total_kimg=LONG)[1]]
    port = free_port()

    def static(rank: int) -> list[str]:
        return [*NODES, "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port)]

    env = {**_node_env(), "PREFECT_HOME": str(seed_prefect_home(tmp_path / "prefect")), LAUNCH_ENV: " ".join(static(0))}
    env.pop("PREFECT_API_URL", None)  # the flow's own temporary Prefect server
    flow = subprocess.Popen(
        [sys.executable, "-m", "ganpipe", "-C", str(nodes[0].root), "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(flow.stdout), daemon=True)
    reader.start()
    node_1 = None
    try:
        deadline = time.monotonic() + 300
        while not any("ganpipe train: under torchrun" in line for line in lines):  # prepare, ref-stats: up to date
            assert flow.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "the flow did not reach its train stage in 300 s"
            time.sleep(0.2)
        node_1 = _launch(nodes[1], static(1))
        deadline = time.monotonic() + 300
        while len(list((nodes[0].root / "models.partial").glob("snapshot-*.pt"))) < 2:
            assert flow.poll() is None and node_1.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "no snapshot after 300 s"
            time.sleep(0.2)
        _machine_dies(node_1.pid)
        killed_at = time.monotonic()
        while not any("retry: training resumes" in line for line in lines):
            assert flow.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() - killed_at < TIMEOUT_S + 120, "the flow's training did not fail and retry"
            time.sleep(0.2)
        took = time.monotonic() - killed_at
        node_1 = _launch(nodes[1], static(1))  # the machine is back: its launcher starts again
        flow.wait(timeout=900)
        reader.join(timeout=60)
        out_1 = node_1.communicate(timeout=120)[0]
    finally:
        for p in (flow, node_1):
            if p is not None and p.poll() is None:
                _machine_dies(p.pid)
    out = "".join(lines)
    assert flow.returncode == 0 and node_1.returncode == 0, out[-3000:] + out_1[-2000:]
    assert took < TIMEOUT_S + 60, f"node 0 took {took:.0f} s to give up"
    assert "lost a process of its job" in out and f"trained {LONG:g} kimg (resumed at" in out
    ckpt = load_checkpoint(nodes[0].models_dir / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["nimg"] == int(LONG * 1000)
    assert not (nodes[1].root / "models.partial").exists() and not nodes[1].run_info_path.exists()
    client = mlflow_client(nodes[0].root)
    run = client.get_run(ckpt["mlflow_run_id"])
    assert run.info.status == "FINISHED" and "ganpipe.resumed_at_kimg" in run.data.tags  # one run, resumed
    assert run.data.tags["ganpipe.interrupted"].startswith("lost a process of the job")  # the crash, as history
    assert "ganpipe.crashed" not in run.data.tags
    name = _trained_once[0].registry.model_name
    versions = client.search_model_versions(f"name='{name}'")
    assert max(versions, key=lambda v: int(v.version)).run_id == run.info.run_id  # registered through the gate
