"""Exact resume after SIGKILL, refusal of changed params, rollback on divergence, the collapse alarm and
two-process training on gloo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from ganpipe.core.errors import TrainingError
from ganpipe.core.params import parse_params
from ganpipe.core.paths import layout
from ganpipe.data.prepare import prepare
from ganpipe.nets.checkpoint import load_checkpoint
from ganpipe.nets.dcgan import DCGANGenerator
from ganpipe.training import losses
from ganpipe.training.loop import train
from ganpipe.training.snapshots import work_dir_of
from tests.conftest import mlflow_client, tiny_params_dict

# Long enough after the first snapshot that a SIGKILL lands mid-run (seconds of CPU training after it);
# the collapse alarm is about other tests (a 16-px G this young counts as collapsed).
pytestmark = pytest.mark.slow  # whole pipelines, servers or killed processes: `make test`, not `make test-fast`


RESUME_TRAIN = {"total_kimg": 9.6, "snapshot_kimg": 1.6, "keep_snapshots": 2, "collapse_after_kimg": 1000.0}
TOTAL_IMG = round(RESUME_TRAIN["total_kimg"] * 1000)  # seconds of training remain after the first snapshot


def _project(root, **overrides):
    raw = tiny_params_dict(**overrides)
    lay = layout(root)
    lay.root.mkdir(parents=True, exist_ok=True)
    lay.params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    p = parse_params(raw)
    prepare(p.data, lay.prepared_dir)
    return p, lay


def _ganpipe(lay, *args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "ganpipe", "-C", str(lay.root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _log(lay):
    return [
        {k: v for k, v in json.loads(s).items() if k != "seconds"}
        for s in (lay.models_dir / "log.jsonl").read_text().splitlines()
    ]


def test_killed_run_resumes_to_bitwise_the_same_weights_in_the_same_mlflow_run(tmp_path):
    """The straight run reads its data from memory, the killed and resumed one streams it from the shards
    (DataLoader workers): the same weights at the end show both exact resume on the streaming path and
    that streaming trains exactly as the in-memory path does."""
    _, straight = _project(tmp_path / "straight", train={**RESUME_TRAIN, "data_loading": "memory"})
    p = _ganpipe(straight, "train")
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out
    assert "training data: memory" in out

    _, lay = _project(tmp_path / "killed", train={**RESUME_TRAIN, "data_loading": "stream", "data_workers": 2})
    work = work_dir_of(lay.models_dir)
    first = work / "snapshot-000000001600.pt"
    proc = _ganpipe(lay, "train")
    deadline = time.monotonic() + 300
    while not first.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not lay.models_dir.exists()  # killed mid-run
    killed_at = load_checkpoint(sorted(work.glob("snapshot-*.pt"))[-1])
    assert 0 < killed_at["nimg"] < TOTAL_IMG
    run_id = killed_at["mlflow_run_id"]
    assert mlflow_client(lay.root).get_run(run_id).info.status == "RUNNING"  # what a SIGKILL leaves

    resumed = _ganpipe(lay, "train")  # plain, as `dvc repro` and the next `ganpipe run` call it
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out
    assert f"resuming at {killed_at['nimg'] / 1000:g} kimg" in out and "left by a training that died" in out
    assert f"resumed at {killed_at['nimg'] / 1000:g} kimg" in out
    assert "training data: stream (train.data_loading) with 2 DataLoader workers" in out

    a, b = load_checkpoint(straight.models_dir / "last.pt"), load_checkpoint(lay.models_dir / "last.pt")
    assert a["nimg"] == b["nimg"] == TOTAL_IMG
    for net in ("G", "D", "G_ema"):
        assert a[net].keys() == b[net].keys()
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net]), net
    for opt in ("opt_G", "opt_D"):
        sa, sb = a[opt]["state"], b[opt]["state"]
        assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa), opt
    assert _log(straight) == _log(lay)  # same losses, quick KIDs and best snapshot at every snapshot
    best_a, best_b = load_checkpoint(straight.checkpoint_path), load_checkpoint(lay.checkpoint_path)
    assert best_a["nimg"] == best_b["nimg"] and all(
        torch.equal(best_a["G_ema"][k], best_b["G_ema"][k]) for k in best_a["G_ema"]
    )

    info = json.loads(lay.run_info_path.read_text())
    assert info["mlflow_run_id"] == run_id and info["resumed_from_kimg"] == killed_at["nimg"] / 1000
    run = mlflow_client(lay.root).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ganpipe.resumed_at_kimg"] == f"{killed_at['nimg'] / 1000:g}"
    assert not work.exists()  # a finished run leaves no resumable state behind


def test_resume_with_changed_params_refuses_naming_the_keys_unless_forced(tmp_path, run_cli):
    raw_train = {**RESUME_TRAIN, "total_kimg": 3.2, "snapshot_kimg": 1.6}
    p, lay = _project(tmp_path, train=raw_train)
    # leave a snapshot behind as a crash would: train, then put the work dir back from a copy
    train(p, lay.prepared_dir, lay.models_dir, lay.root)
    ckpt = load_checkpoint(lay.root / "models" / "last.pt")
    from ganpipe.training.snapshots import Snapshots

    Snapshots(work_dir_of(lay.models_dir), 2).save({k: v for k, v in ckpt.items() if k != "format_version"})
    raw = yaml.safe_load(lay.params_path.read_text())
    raw["train"]["lr"] = 0.001
    raw["train"]["total_kimg"] = 4.8
    lay.params_path.write_text(yaml.safe_dump(raw, sort_keys=False))

    code, out, err = run_cli("-C", lay.root, "train", "--resume")
    out += err  # stdout and stderr together, as a terminal shows them
    assert code == 2
    assert "resume refused" in out and "train.lr: 0.0002 -> 0.001" in out and "train.total_kimg: 3.2 -> 4.8" in out
    assert len(out.strip().splitlines()) == 1, out  # one clear line, no traceback

    forced = _ganpipe(lay, "train", "--resume", "--force")
    out = forced.communicate(timeout=600)[0]
    assert forced.returncode == 0, out
    info = json.loads(lay.run_info_path.read_text())
    assert info["resumed_from_kimg"] == 3.2 and info["kimg"] >= 4.8
    assert info["mlflow_run_id"] == ckpt["mlflow_run_id"]
    tags = mlflow_client(lay.root).get_run(info["mlflow_run_id"]).data.tags
    assert "train.lr: 0.0002 -> 0.001" in tags["ganpipe.resumed_with_changes"]


def test_a_fresh_training_marks_the_run_an_abandoned_one_left_running_failed(tmp_path):
    from ganpipe.training.snapshots import Snapshots

    p, lay = _project(tmp_path, train={**RESUME_TRAIN, "total_kimg": 1.6, "snapshot_kimg": 1.6})
    train(p, lay.prepared_dir, lay.models_dir, lay.root)
    ckpt = load_checkpoint(lay.root / "models" / "last.pt")
    client = mlflow_client(lay.root)
    # what a machine that died mid-training leaves: a snapshot and its MLflow run still RUNNING
    dead = client.create_run(client.get_run(ckpt["mlflow_run_id"]).info.experiment_id).info.run_id
    Snapshots(work_dir_of(lay.models_dir), 2).save(
        {**{k: v for k, v in ckpt.items() if k != "format_version"}, "mlflow_run_id": dead}
    )
    info = train(p, lay.prepared_dir, lay.models_dir, lay.root, fresh=True)  # --fresh: starts afresh
    run = client.get_run(dead)
    assert run.info.status == "FAILED" and "started afresh" in run.data.tags["ganpipe.failure"]
    assert info["mlflow_run_id"] not in (dead, ckpt["mlflow_run_id"])
    assert client.get_run(info["mlflow_run_id"]).info.status == "FINISHED"


@pytest.mark.parametrize(
    "change, why",
    [
        ("none", None),
        ("code", "the ganpipe code changed since"),
        ("params", "params or data differ (train.lr: 0.0002 -> 0.001)"),
        ("fresh", None),
    ],
)
def test_a_dead_trainings_snapshot_is_resumed_only_when_params_data_and_code_match(tmp_path, capsys, change, why):
    from ganpipe.training.snapshots import Snapshots

    p, lay = _project(tmp_path, train={**RESUME_TRAIN, "total_kimg": 1.6, "snapshot_kimg": 1.6})
    train(p, lay.prepared_dir, lay.models_dir, lay.root)
    ckpt = {k: v for k, v in load_checkpoint(lay.root / "models" / "last.pt").items() if k != "format_version"}
    if change == "code":
        ckpt["code_sha256"] = "0" * 64  # written by another version of ganpipe
    Snapshots(work_dir_of(lay.models_dir), 2).save({**ckpt, "nimg": 800})  # as a training killed at 0.8 kimg
    if change == "params":
        p = parse_params(tiny_params_dict(train={**RESUME_TRAIN, "total_kimg": 1.6, "snapshot_kimg": 1.6, "lr": 0.001}))
    capsys.readouterr()
    info = train(p, lay.prepared_dir, lay.models_dir, lay.root, fresh=change == "fresh")
    out = capsys.readouterr().out
    if change == "none":
        assert info["resumed_from_kimg"] == 0.8 and "resuming at 0.8 kimg from snapshot-000000000800.pt" in out
        return
    assert info["resumed_from_kimg"] is None and "resuming at" not in out
    if why:
        assert f"not resuming snapshot-000000000800.pt, left by a training that died: {why}" in out


def test_a_snapshot_from_before_a_params_schema_change_resumes_only_when_forced(tmp_path, run_cli):
    from ganpipe.training.snapshots import Snapshots

    p, lay = _project(tmp_path, train={**RESUME_TRAIN, "total_kimg": 1.6, "snapshot_kimg": 1.6})
    train(p, lay.prepared_dir, lay.models_dir, lay.root)
    ckpt = load_checkpoint(lay.root / "models" / "last.pt")
    old = {k: v for k, v in ckpt.items() if k != "format_version"}
    del old["params"]["train"]["max_grad_norm"]  # a key added to the schema after this snapshot was taken
    Snapshots(work_dir_of(lay.models_dir), 2).save(old)

    code, out, err = run_cli("-C", lay.root, "train", "--resume")
    out += err
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert f"train.max_grad_norm: None -> {p.train.max_grad_norm!r}" in out
    forced = _ganpipe(lay, "train", "--resume", "--force")
    out = forced.communicate(timeout=600)[0]
    assert forced.returncode == 0, out


def _nan_after(monkeypatch, start: int, stop: int | None = None) -> None:
    """Make the discriminator loss NaN from its `start`-th call on (until `stop`)."""
    real_d_loss, calls = losses.d_loss, [0]

    def d_loss(kind, real, fake):
        calls[0] += 1
        out = real_d_loss(kind, real, fake)
        return out * float("nan") if start <= calls[0] and (stop is None or calls[0] < stop) else out

    monkeypatch.setattr(losses, "d_loss", d_loss)


def test_a_transient_nan_rolls_back_and_training_finishes(tmp_path, monkeypatch):
    p, lay = _project(tmp_path, train={"total_kimg": 0.512, "max_rollbacks": 2})
    _nan_after(monkeypatch, 10, 11)  # one bad step after the first snapshot (4 steps of 32 images)
    info = train(p, lay.prepared_dir, lay.models_dir, lay.root)
    client = mlflow_client(lay.root)
    assert [m.value for m in client.get_metric_history(info["mlflow_run_id"], "rollbacks")] == [1]
    last = load_checkpoint(lay.models_dir / "last.pt")
    assert all(torch.isfinite(v).all() for v in last["G"].values() if v.is_floating_point())
    assert client.get_run(info["mlflow_run_id"]).info.status == "FINISHED"


def test_persistent_divergence_fails_the_run_after_max_rollbacks(tmp_path, monkeypatch):
    p, lay = _project(tmp_path, train={"total_kimg": 0.512, "max_rollbacks": 2})
    _nan_after(monkeypatch, 6)
    with pytest.raises(TrainingError, match=r"diverged .* after 2 rollback\(s\) \(train.max_rollbacks = 2\)"):
        train(p, lay.prepared_dir, lay.models_dir, lay.root)
    assert not lay.models_dir.exists()  # nothing for evaluate/register to pick up: the champion stays
    client = mlflow_client(lay.root)
    (run,) = client.search_runs([client.get_experiment_by_name(p.base.experiment).experiment_id])
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["ganpipe.failure"]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "rollbacks")] == [1, 2]


def test_a_large_gradient_norm_counts_as_divergence(tmp_path):
    p, lay = _project(tmp_path, train={"total_kimg": 0.256, "max_rollbacks": 1, "max_grad_norm": 1e-6})
    with pytest.raises(TrainingError, match="gradient norm over train.max_grad_norm"):
        train(p, lay.prepared_dir, lay.models_dir, lay.root)


class _Collapsed(DCGANGenerator):
    """A generator that ignores its latent: every image the same (per class)."""

    def forward(self, z, c=None):
        return super().forward(torch.zeros_like(z), c)


def _force_collapse(monkeypatch):
    import ganpipe.training.engine as engine

    def build(config):
        G = _Collapsed(config["z_dim"], config["channels"], config["resolution"], config["g_channels"])
        from ganpipe.nets.dcgan import init_weights

        G.apply(init_weights)
        return G

    monkeypatch.setattr(engine, "build_generator", build)


def test_a_collapsed_generator_trips_the_alarm_and_stops_the_run(tmp_path, monkeypatch):
    p, lay = _project(tmp_path, train={"total_kimg": 0.768, "collapse_after_kimg": 0.0, "collapse_patience": 2})
    _force_collapse(monkeypatch)
    with pytest.raises(TrainingError, match=r"mode collapse: .* 2 snapshots in a row \(kimg 0.256\)"):
        train(p, lay.prepared_dir, lay.models_dir, lay.root)
    client = mlflow_client(lay.root)
    (run,) = client.search_runs([client.get_experiment_by_name(p.base.experiment).experiment_id])
    assert run.info.status == "FAILED" and "mode collapse" in run.data.tags["ganpipe.failure"]
    diversity = client.get_metric_history(run.info.run_id, "diversity")
    dup = client.get_metric_history(run.info.run_id, "duplicate_rate")
    assert len(diversity) == 2 and all(m.value < 1e-4 for m in diversity)
    assert all(m.value == 1.0 for m in dup)


def test_the_alarm_tells_a_training_generator_from_a_collapsed_one(tmp_path, monkeypatch):
    alarm = {
        "total_kimg": 0.384,
        "collapse_after_kimg": 0.0,
        "collapse_patience": 1,
        "collapse_action": "warn",
        "collapse_threshold": 1e-4,
    }
    p, lay = _project(tmp_path / "healthy", train=alarm)
    info = train(p, lay.prepared_dir, lay.models_dir, lay.root)
    client = mlflow_client(lay.root)
    assert "ganpipe.warning" not in client.get_run(info["mlflow_run_id"]).data.tags
    healthy = min(m.value for m in client.get_metric_history(info["mlflow_run_id"], "diversity"))
    _force_collapse(monkeypatch)
    p2, lay2 = _project(tmp_path / "collapsed", train=alarm)
    info = train(p2, lay2.prepared_dir, lay2.models_dir, lay2.root)  # warn: the run finishes
    client = mlflow_client(lay2.root)
    assert "mode collapse" in client.get_run(info["mlflow_run_id"]).data.tags["ganpipe.warning"]
    collapsed = max(m.value for m in client.get_metric_history(info["mlflow_run_id"], "diversity"))
    assert collapsed < 1e-4 < healthy


def test_two_processes_on_gloo_train_and_rank_0_alone_writes(tmp_path):
    p, lay = _project(tmp_path, train={"total_kimg": 0.512, "snapshot_kimg": 0.256})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "ganpipe",
            "-C",
            str(lay.root),
            "train",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("trained 0.512 kimg") == 1  # rank 0 reports; rank 1 is silent
    client = mlflow_client(lay.root)
    runs = client.search_runs([client.get_experiment_by_name(p.base.experiment).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [x["kimg"] for x in _log(lay)] == [0.256, 0.512]  # one line per snapshot, not one per rank
    assert len(client.get_metric_history(runs[0].info.run_id, "quick_kid")) == 2
    ckpt = load_checkpoint(lay.models_dir / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["nimg"] == 512
