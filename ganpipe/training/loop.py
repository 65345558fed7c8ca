"""The `train` stage: adversarial training of the generator, tracked in MLflow (StyleGAN2-ADA's loop).

Length and snapshot cadence are in kimg (thousands of real images shown to D). Each snapshot logs a
fixed-noise grid of the EMA generator (with its step, so the MLflow UI pages through them), a quick KID
and a diversity probe, writes a resumable checkpoint and appends a JSON line to `log.jsonl`. The stage
outputs the snapshot with the best quick KID. Divergence (a non-finite loss or an over-large gradient
norm) rolls back to the newest snapshot; a collapsing generator stops the run (or warns).
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path

import mlflow
import numpy as np
import torch

from ganpipe.core import tracking
from ganpipe.core.dvc import locked_hash
from ganpipe.core.errors import ConfigError, DataError
from ganpipe.core.hashing import code_sha256
from ganpipe.core.io import atomic_dir
from ganpipe.core.params import Params, dumped_flat
from ganpipe.data.prepare import load_split, read_manifest
from ganpipe.data.shards import ShardedImages
from ganpipe.nets.checkpoint import load_checkpoint
from ganpipe.nets.models import generator_config
from ganpipe.training import augment, distributed
from ganpipe.training.batches import batches_of
from ganpipe.training.engine import Engine
from ganpipe.training.outputs import write_outputs
from ganpipe.training.probes import Probe
from ganpipe.training.snapshots import Snapshots, abandoned_run_id, work_dir_of
from ganpipe.training.state import Key, RunRecord, TrainState
from ganpipe.training.trainer import Trainer, process_seed, resume_from, seed_all

SECTIONS = ("base", "model", "train")  # the params sections this stage reads ...
PARAMS = (*SECTIONS, "eval.inception_weights")  # ... and the one key beyond them; dvc.yaml lists the same
# how the data is read: the same training either way (tests/test_streaming.py), so a resume ignores them
LOADING_KEYS = ("train.data_loading", "train.data_gpu_share", "train.data_memory_mb", "train.data_workers")


def num_classes_of(manifest: dict, labels: np.ndarray) -> int:
    """Classes of a dataset for a conditional model; a dataset without labels cannot condition one."""
    k = int(manifest.get("num_classes") or 0)
    if k < 2:
        raise DataError(
            f"model.conditional is true but the dataset {manifest['source']!r} has "
            f"{k} class label{'s' if k != 1 else ''}; set model.conditional: false"
        )
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < k:
        raise DataError(f"labels outside 0..{k - 1} in the prepared data; re-run `ganpipe prepare`")
    return k


def resume_differences(saved: dict, params: Params, data_sha256: str) -> list[str]:
    """'key: old -> new' for every setting that differs between a checkpoint and the current run."""
    now = {**params.flat(*SECTIONS), "data.sha256": data_sha256}
    then = {**dumped_flat(saved[Key.PARAMS], *SECTIONS), "data.sha256": saved[Key.DATA_SHA256]}
    return [
        f"{k}: {then.get(k)!r} -> {now.get(k)!r}"
        for k in sorted((now.keys() | then.keys()) - set(LOADING_KEYS))
        if then.get(k) != now.get(k)
    ]


def train(
    params: Params,
    prepared_dir: str | Path,
    out_dir: str | Path,
    root: str | Path = ".",
    resume: bool = False,
    force: bool = False,
    fresh: bool = False,
) -> dict:
    """Train on the prepared train split; write checkpoint (best snapshot), run info, log and grid to
    `out_dir`. `resume` continues from the newest snapshot in `<out_dir>.partial/` (and its MLflow run)
    when there is one; changed params refuse unless `force`. Without `resume`, a snapshot that a training
    which died left is resumed all the same when its params, data and code are the current ones, unless
    `fresh`."""
    world, device = distributed.setup(params.base.device)
    try:
        return _train(params, Path(prepared_dir), Path(out_dir), Path(root), resume, force, fresh, world, device)
    finally:
        distributed.shutdown(world)


def _train(
    params: Params,
    prepared_dir: Path,
    out_dir: Path,
    root: Path,
    resume: bool,
    force: bool,
    fresh: bool,
    world: distributed.World,
    device: torch.device,
) -> dict:
    base, mp, tp = params.base, params.model, params.train
    manifest = read_manifest(prepared_dir)
    images, labels = load_split(prepared_dir, "train")
    if len(images) < tp.batch_size:
        raise DataError(f"train split has {len(images)} images, fewer than train.batch_size = {tp.batch_size}")
    if tp.batch_size % world.size:
        raise ConfigError(f"train.batch_size = {tp.batch_size} is not divisible by {world.size} processes")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    num_classes = num_classes_of(manifest, labels) if mp.conditional else 0
    config = generator_config(mp.model_dump(), manifest["channels"], manifest["resolution"], num_classes)
    if num_classes:
        config["class_names"] = list(manifest["class_names"])
    augment_on = augment.enabled(tp.augment, len(images))

    # The order of what follows is the order of random draws: exact resume depends on it.
    seed_all(base.seed)
    engine = Engine(config, mp.arch, mp.d_channels, tp, device, augment_on, world.distributed)
    if world.rank:
        seed_all(process_seed(base.seed, world.rank))  # each process draws its own latents and augmentations
    batches, loading = batches_of(tp, images, labels, bool(num_classes), base.seed, world, device, engine.channels_last)
    state = TrainState(perm=batches.permutation())
    snaps = Snapshots(work_dir_of(out_dir), tp.keep_snapshots)
    code = code_sha256()
    saved, diff = _agreed_resume_point(
        snaps, params, manifest["sha256"], code, resume, force, fresh, world, root, device
    )
    if saved is not None:
        state = resume_from(saved, engine, batches.shuffle, base.seed, world)
    probe = _build_probe(params, images, manifest["sha256"], device) if world.main else None
    trainer = Trainer(tp, base.seed, world, engine, batches, snaps, state, probe)
    rank0 = world.main
    if saved is not None and rank0:
        trainer.mark_best_if_missed()

    lineage: dict = {}
    run_ctx = None
    if rank0:
        lineage = {
            "prepared_dir": prepared_dir,
            "git_commit": tracking.git_commit(root),
            "data_dvc_md5": locked_hash(root, os.path.relpath(prepared_dir.resolve(), root.resolve())),
        }
        print(f"training data: {loading}", flush=True)
        run_ctx = _start_run(params, manifest, saved, diff, len(images), device, augment_on, lineage, root)
    with atomic_dir(out_dir) if rank0 else nullcontext() as tmp, run_ctx or nullcontext() as run:
        record = RunRecord(
            generator_config=config,
            params=params.model_dump(mode="json"),
            mlflow_run_id=run.info.run_id if rank0 else "",
            data_sha256=manifest["sha256"],
            world_size=world.size,
            augment={"enabled": augment_on, "policy": list(tp.augment_policy)},
            code_sha256=code,
        )
        if rank0:
            mlflow.set_tag("ganpipe.data_loading", loading)
        start_nimg, t_session = trainer.state.nimg, time.perf_counter()
        try:
            trainer.run(record, fresh=saved is None)
        except Exception as exc:
            if rank0 and world.distributed and distributed.lost_process(exc):  # a crash: the flow retries it
                mlflow.set_tag(tracking.CRASH_TAG, f"lost a process of the job: {str(exc)[:500]}")
            raise
        finally:
            batches.close()
        state = trainer.state
        if not rank0:
            return {"rank": world.rank, "kimg": state.nimg / 1000}
        seconds = time.perf_counter() - t_session
        mlflow.log_metrics(
            {"train_images_per_second": (state.nimg - start_nimg) / seconds, "best_kimg": state.best["kimg"]},
            step=state.nimg,
        )
        info = write_outputs(snaps, tmp, state, run, manifest, config, device, seconds, start_nimg, lineage)
    snaps.clear()
    return info


def _agreed_resume_point(
    snaps: Snapshots,
    params: Params,
    data_sha256: str,
    code: str,
    resume: bool,
    force: bool,
    fresh: bool,
    world: distributed.World,
    root: Path,
    device: torch.device,
) -> tuple[dict | None, list[str]]:
    """Where every process starts: rank 0 decides from its own disk (on several machines only rank 0's
    holds the snapshots) and sends the checkpoint to the others."""
    if not world.distributed:
        return _resume_point(snaps, params, data_sha256, code, resume, force, fresh, root)
    saved, diff, failure = None, [], None
    if world.main:
        try:
            saved, diff = _resume_point(snaps, params, data_sha256, code, resume, force, fresh, root)
        except Exception as exc:  # the others must not wait for a decision that never comes
            failure = exc
    saved = distributed.share_checkpoint(saved, world, device, failed=failure is not None)
    if failure is not None:
        raise failure
    return saved, diff if world.main else []


def _resume_point(
    snaps: Snapshots,
    params: Params,
    data_sha256: str,
    code: str,
    resume: bool,
    force: bool,
    fresh: bool,
    root: Path,
) -> tuple[dict | None, list[str]]:
    """Rank 0's decision: the checkpoint to resume from and how its params differ (None, [] for a fresh
    run, which clears the work directory of snapshots some other run left)."""
    latest = snaps.latest()
    if resume and latest is not None:
        saved = load_checkpoint(latest)
        diff = resume_differences(saved, params, data_sha256)
        if diff and not force:
            raise ConfigError(
                f"resume refused: params differ from {latest.name} ({'; '.join(diff)}); "
                "use --force to resume with the new values, or train without --resume"
            )
        return saved, diff
    if latest is not None and not resume and not fresh:
        saved, why_not = _resumable(latest, params, data_sha256, code)
        if saved is not None:
            print(
                f"resuming at {saved[Key.NIMG] / 1000:g} kimg from {latest.name}, left by a training that "
                "died: its params, data and code are today's (`ganpipe train --fresh` or "
                "`ganpipe run --force` start over)",
                flush=True,
            )
            return saved, []
        print(f"not resuming {latest.name}, left by a training that died: {why_not}; starting over", flush=True)
    if (old_run := abandoned_run_id(snaps.path)) is not None:  # its process died and nobody resumed it
        tracking.configure(root)
        if tracking.fail_run_if_running(
            old_run, "abandoned: its training process died, and a later training started afresh instead of resuming"
        ):
            print(f"MLflow run {old_run} of an abandoned training marked FAILED")
    snaps.clear()  # a fresh run: stale snapshots of another run must not be resumed later
    return None, []


def _resumable(latest: Path, params: Params, data_sha256: str, code: str) -> tuple[dict | None, str]:
    """(the snapshot, "") when a training can go on from it as if it had never stopped: the same params
    (every section training reads), the same prepared data and the same ganpipe code; else (None, why)."""
    try:
        saved = load_checkpoint(latest)
    except Exception as exc:  # an unreadable snapshot is a reason to start over, not to fail
        return None, f"unreadable ({type(exc).__name__})"
    try:
        diff = resume_differences(saved, params, data_sha256)
    except (KeyError, TypeError, ValueError):  # written under an older params schema
        return None, "its params are from an older ganpipe"
    if diff:
        return None, f"params or data differ ({'; '.join(diff)[:500]})"
    if saved.get(Key.CODE_SHA256) != code:
        return None, "the ganpipe code changed since" if saved.get(Key.CODE_SHA256) else "it records no code version"
    return saved, ""


def _build_probe(params: Params, images: ShardedImages, data_sha256: str, device: torch.device) -> Probe:
    # building a network draws from torch's RNG: fork it, so measuring never changes training
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        tp = params.train
        return Probe.build(
            params.eval, tp.snapshot_extractor, images, tp.snapshot_kid_images, params.base.seed, data_sha256, device
        )


def _start_run(
    params: Params,
    manifest: dict,
    saved: dict | None,
    diff: list[str],
    num_train: int,
    device: torch.device,
    augment_on: bool,
    lineage: dict,
    root: Path,
) -> mlflow.ActiveRun:
    """The MLflow run: the checkpoint's run when resuming (and it still exists), else a new one."""
    tracking.configure(root)
    exp_id = tracking.experiment_id(params.base.experiment, root)
    if saved is not None and (run_id := saved.get(Key.MLFLOW_RUN_ID)):
        try:
            mlflow.tracking.MlflowClient().get_run(run_id)
        except mlflow.exceptions.MlflowException:
            print(f"MLflow run {run_id} of the checkpoint is gone; logging to a new run")
        else:
            run = mlflow.start_run(run_id=run_id)
            mlflow.set_tag("ganpipe.resumed_at_kimg", f"{saved[Key.NIMG] / 1000:g}")
            tags = run.data.tags if run.data else {}
            failure = tags.get("ganpipe.failure") or tags.get(tracking.CRASH_TAG)
            if failure:  # what the orchestrator noted when the process died: history, no longer the state
                mlflow.set_tag("ganpipe.interrupted", failure)
                for key in ("ganpipe.failure", tracking.CRASH_TAG):
                    if key in tags:
                        mlflow.tracking.MlflowClient().delete_tag(run.info.run_id, key)
            if diff:
                mlflow.set_tag("ganpipe.resumed_with_changes", "; ".join(diff)[:5000])
            return run
    run = mlflow.start_run(experiment_id=exp_id)
    mlflow.log_params(
        {
            **params.flat(*SECTIONS),
            "eval.inception_weights": params.eval.inception_weights,
            "data.sha256": manifest["sha256"],
            "data.source": manifest["source"],
            "data.resolution": manifest["resolution"],
            "data.train_images": num_train,
            "train.augment_enabled": augment_on,
        }
    )
    tracking.log_dataset(lineage["prepared_dir"], manifest, lineage["data_dvc_md5"])
    mlflow.set_tags(
        {
            "ganpipe.stage": "train",
            "ganpipe.device": str(device),
            "ganpipe.data_sha256": manifest["sha256"],
            "ganpipe.params_hash": params.section_hash(*SECTIONS),
            "mlflow.source.git.commit": lineage["git_commit"],
        }
    )
    return run
