"""The `train` stage: adversarial training of the generator, tracked in MLflow (StyleGAN2-ADA's loop).

Length and snapshot cadence are in kimg (thousands of real images shown to D). Each snapshot logs a
fixed-noise grid of the EMA generator (with its step, so the MLflow UI pages through them), a quick KID
and a diversity probe, writes a resumable checkpoint and appends a JSON line to `log.jsonl`. The stage
outputs the snapshot with the best quick KID. Divergence (a non-finite loss or an over-large gradient
norm) rolls back to the newest snapshot; a collapsing generator stops the run (or warns).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import mlflow
import numpy as np
import torch
from tqdm import tqdm

from ganpipe.core import tracking
from ganpipe.core.dvc import locked_hash
from ganpipe.core.errors import ConfigError, DataError, TrainingError
from ganpipe.core.images import grid, save_png
from ganpipe.core.io import atomic_dir, write_json
from ganpipe.core.metric_keys import is_better
from ganpipe.core.params import Params, dumped_flat
from ganpipe.data.prepare import load_split, read_manifest
from ganpipe.evaluation.features import build_extractor
from ganpipe.nets.checkpoint import load_checkpoint, rng_states, set_rng_states
from ganpipe.nets.models import generator_config, sample
from ganpipe.training import augment, distributed
from ganpipe.training.engine import Engine
from ganpipe.training.probes import Probe
from ganpipe.training.snapshots import Snapshots, abandoned_run_id, work_dir_of

SECTIONS = ("base", "model", "train")  # the params sections this stage reads ...
PARAMS = (*SECTIONS, "eval.inception_weights")  # ... and the one key beyond them; dvc.yaml lists the same
GRID_SEED0 = 10_000_000  # fixed-noise grid seeds, far from evaluation seeds


CURVES = "curves.csv"  # the snapshot log as a table: dvc.yaml's `plots` draw it (`dvc plots show`)
CURVE_COLUMNS = ("kimg", "loss_G", "loss_D", "quick_kid", "diversity", "duplicate_rate")


def log_text(log: list[dict]) -> str:
    """The snapshot log as JSON lines (`log.jsonl`)."""
    return "".join(json.dumps(x) + "\n" for x in log)


def write_curves(log: list[dict], path: Path) -> None:
    with open(path, "w") as f:
        f.write(",".join(CURVE_COLUMNS) + "\n")
        for line in log:
            f.write(",".join("" if line.get(c) is None else f"{line[c]:.6g}" for c in CURVE_COLUMNS) + "\n")


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
    then = {**dumped_flat(saved["params"], *SECTIONS), "data.sha256": saved["data_sha256"]}
    return [
        f"{k}: {then.get(k)!r} -> {now.get(k)!r}" for k in sorted(now.keys() | then.keys()) if then.get(k) != now.get(k)
    ]


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def train(
    params: Params,
    prepared_dir: str | Path,
    out_dir: str | Path,
    root: str | Path = ".",
    resume: bool = False,
    force: bool = False,
) -> dict:
    """Train on the prepared train split; write checkpoint (best snapshot), run info, log and grid to
    `out_dir`. `resume` continues from the newest snapshot in `<out_dir>.partial/` (and its MLflow run)
    when there is one; changed params refuse unless `force`."""
    world, device = distributed.setup(params.base.device)
    try:
        return _train(params, Path(prepared_dir), Path(out_dir), Path(root), resume, force, world, device)
    finally:
        distributed.shutdown(world)


def _train(
    params: Params,
    prepared_dir: Path,
    out_dir: Path,
    root: Path,
    resume: bool,
    force: bool,
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

    _seed_all(base.seed)
    engine = Engine(config, mp.arch, mp.d_channels, tp, device, augment_on, world.distributed)
    if world.rank:
        _seed_all(base.seed + 7919 * world.rank)  # each process draws its own latents and augmentations
    x_all = torch.from_numpy(np.array(images))  # uint8; held on the device when it fits
    if device.type == "cuda" and x_all.nbytes < 0.5 * torch.cuda.mem_get_info(device)[0]:
        x_all = x_all.to(device)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(x_all.device)
    shuffle = torch.Generator().manual_seed(base.seed)
    st = {
        "nimg": 0,
        "step": 0,
        "perm": torch.randperm(len(x_all), generator=shuffle),
        "pos": 0,
        "best": None,
        "log": [],
        "collapse_streak": 0,
        "rollbacks": 0,
    }

    snaps = Snapshots(work_dir_of(out_dir), tp.keep_snapshots)
    saved, diff = None, []
    if resume and (latest := snaps.latest()) is not None:
        saved = load_checkpoint(latest)
        diff = resume_differences(saved, params, manifest["sha256"])
        if diff and not force:
            raise ConfigError(
                f"resume refused: params differ from {latest.name} ({'; '.join(diff)}); "
                "use --force to resume with the new values, or train without --resume"
            )
    elif world.main:
        if (old_run := abandoned_run_id(snaps.path)) is not None:  # its process died and nobody resumed it
            tracking.configure(root)
            if tracking.fail_run_if_running(
                old_run, "abandoned: its training process died, and a later training started afresh instead of resuming"
            ):
                print(f"MLflow run {old_run} of an abandoned training marked FAILED")
        snaps.clear()  # a fresh run: stale snapshots of another run must not be resumed later
    world.barrier()

    def restore(state: dict, reseed: int | None = None) -> None:
        engine.load_state_dict(state)
        for k in st:
            st[k] = state[k]
        shuffle.set_state(state["shuffle_rng"])
        set_rng_states(state["rng"])
        if reseed is not None or world.rank:  # rollback: a different draw than the one that diverged
            _seed_all(base.seed + 7919 * world.rank + 104_729 * (reseed or 0) + int(state["nimg"]))

    if saved is not None:
        restore(saved)

    rank0 = world.main
    probe = None
    if rank0:  # building a network draws from torch's RNG: fork it, so measuring never changes training
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            extractor = build_extractor(params.eval.model_copy(update={"extractor": tp.snapshot_extractor}), device)
            probe = Probe.build(extractor, images, tp.snapshot_kid_images, base.seed)
    grid_seeds = list(range(GRID_SEED0, GRID_SEED0 + tp.grid_size))
    total_img = int(round(tp.total_kimg * 1000))
    snapshot_img = int(round(tp.snapshot_kimg * 1000))
    per_rank = tp.batch_size // world.size
    if (
        saved is not None
        and rank0
        and st["best"]
        and round(st["best"]["kimg"] * 1000) == st["nimg"]
        and snaps.best_nimg() != st["nimg"]
    ):  # killed between writing a best snapshot and marking it
        save_png(grid(sample(engine.G_ema, grid_seeds).numpy()), snaps.path / "latest.png")
        snaps.mark_best(snaps.latest(), snaps.path / "latest.png")

    lineage: dict = {}
    run_ctx = None
    if rank0:
        lineage = {
            "prepared_dir": prepared_dir,
            "git_commit": tracking.git_commit(root),
            "data_dvc_md5": locked_hash(root, os.path.relpath(prepared_dir.resolve(), root.resolve())),
        }
        run_ctx = _start_run(
            params, manifest, saved, diff if saved is not None else [], len(images), device, augment_on, lineage, root
        )
    with atomic_dir(out_dir) if rank0 else nullcontext() as tmp, run_ctx or nullcontext() as run:
        run_id = run.info.run_id if rank0 else ""
        pending: list[tuple[int, torch.Tensor]] = []
        t0 = time.perf_counter() - (st["log"][-1]["seconds"] if st["log"] else 0.0)
        start_nimg = st["nimg"]
        t_session = time.perf_counter()

        def state() -> dict:
            return {
                **engine.state_dict(),
                **st,
                "shuffle_rng": shuffle.get_state(),
                "rng": rng_states(),
                "generator_config": config,
                "params": params.model_dump(mode="json"),
                "mlflow_run_id": run_id,
                "data_sha256": manifest["sha256"],
                "world_size": world.size,
                "augment": {"enabled": augment_on, "policy": list(tp.augment_policy)},
            }

        def snapshot() -> None:
            series = []
            if pending:
                values = torch.stack([v for _, v in pending]).cpu().tolist()  # one host sync per snapshot
                for (n, _), (lg, ld) in zip(pending, values):
                    series += [("loss_G", lg, n), ("loss_D", ld, n)]
                pending.clear()
            tracking.log_metric_series(run_id, series)
            m = probe.measure(engine.G_ema)
            mlflow.log_metrics(m, step=st["nimg"])
            img = grid(sample(engine.G_ema, grid_seeds).numpy())
            mlflow.log_image(np.asarray(img), key="samples", step=st["nimg"])
            save_png(img, snaps.path / "latest.png")
            best = st["best"] is None or is_better("kid", m["quick_kid"], st["best"]["quick_kid"])
            if best:
                st["best"] = {"kimg": st["nimg"] / 1000, "quick_kid": m["quick_kid"]}
            low = m["diversity"] < tp.collapse_threshold and st["nimg"] >= tp.collapse_after_kimg * 1000
            st["collapse_streak"] = st["collapse_streak"] + 1 if low else 0
            line = {
                "kimg": st["nimg"] / 1000,
                "step": st["step"],
                "seconds": round(time.perf_counter() - t0, 3),
                **({"loss_G": series[-2][1], "loss_D": series[-1][1]} if series else {}),
                **m,
                "best": best,
            }
            st["log"].append(line)
            path = snaps.save(state())
            if best:
                snaps.mark_best(path, snaps.path / "latest.png")
            snaps.log_path.write_text(log_text(st["log"]))

        def rollback(reason: str) -> None:
            rollbacks = st["rollbacks"] + 1  # kept in snapshots: a resume does not reset the budget
            latest = snaps.latest()
            if rollbacks > tp.max_rollbacks or latest is None:
                message = (
                    f"training diverged ({reason}) at {st['nimg'] / 1000:g} kimg after {rollbacks - 1} "
                    f"rollback(s) (train.max_rollbacks = {tp.max_rollbacks}); try a lower train.lr or "
                    "another train.loss"
                )
                if rank0:
                    mlflow.set_tag("ganpipe.failure", message)
                raise TrainingError(message)
            restore(load_checkpoint(latest), reseed=rollbacks)
            st["rollbacks"] = rollbacks
            pending[:] = [p for p in pending if p[0] <= st["nimg"]]
            if rank0:
                print(f"diverged ({reason}); rolled back to {st['nimg'] / 1000:g} kimg (rollback {rollbacks})")
                mlflow.log_metric("rollbacks", rollbacks, step=st["nimg"])

        def batch() -> tuple[torch.Tensor, torch.Tensor | None]:
            if st["pos"] + tp.batch_size > len(st["perm"]):
                st["perm"], st["pos"] = torch.randperm(len(x_all), generator=shuffle), 0
            idx = st["perm"][st["pos"] : st["pos"] + tp.batch_size][world.rank * per_rank : (world.rank + 1) * per_rank]
            st["pos"] += tp.batch_size
            idx = idx.to(x_all.device)
            real = x_all[idx].to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
            if engine.channels_last:
                real = real.contiguous(memory_format=torch.channels_last)
            # fakes get the real batch's classes: G sees the data's class frequencies
            return real, (y_all[idx].to(device) if num_classes else None)

        if saved is None and rank0:
            snaps.save(state())  # the rollback point before the first snapshot
        world.barrier()
        next_snapshot = (st["nimg"] // snapshot_img + 1) * snapshot_img
        with tqdm(
            total=total_img,
            initial=st["nimg"],
            unit="img",
            unit_scale=True,
            desc="train",
            mininterval=2.0,
            disable=not rank0,
        ) as bar:
            while st["nimg"] < total_img:
                loss = engine.step([batch() for _ in range(tp.d_steps)])
                engine.update_ema(st["nimg"], tp.batch_size * tp.d_steps)  # half-life in images shown
                st["nimg"] += tp.batch_size * tp.d_steps
                st["step"] += 1
                bar.update(tp.batch_size * tp.d_steps)
                at_snapshot = st["nimg"] >= next_snapshot or st["nimg"] >= total_img
                if st["step"] % tp.log_every_steps == 0 or at_snapshot:
                    if st["step"] % tp.log_every_steps == 0 and rank0:
                        pending.append((st["nimg"], loss))
                    if world.any(engine.bad):
                        rollback("non-finite loss or gradient norm over train.max_grad_norm")
                        next_snapshot = (st["nimg"] // snapshot_img + 1) * snapshot_img
                        bar.n = st["nimg"]
                        continue
                if at_snapshot:
                    if rank0:
                        snapshot()
                    next_snapshot += snapshot_img
                    collapsed = world.decide(st["collapse_streak"] >= tp.collapse_patience, device)
                    world.barrier()
                    if collapsed:
                        message = (
                            f"mode collapse: diversity under train.collapse_threshold = "
                            f"{tp.collapse_threshold} at {tp.collapse_patience} snapshots in a row "
                            f"(kimg {st['nimg'] / 1000:g})"
                        )
                        if tp.collapse_action == "stop":
                            if rank0:
                                mlflow.set_tag("ganpipe.failure", message)
                            raise TrainingError(message + "; the run stops (train.collapse_action: stop)")
                        if rank0:
                            print(f"warning: {message}")
                            mlflow.set_tag("ganpipe.warning", message)
        if not rank0:
            return {"rank": world.rank, "kimg": st["nimg"] / 1000}
        seconds = time.perf_counter() - t_session
        mlflow.log_metrics(
            {"train_images_per_second": (st["nimg"] - start_nimg) / seconds, "best_kimg": st["best"]["kimg"]},
            step=st["nimg"],
        )
        info = _finish(snaps, tmp, st, run, manifest, config, device, seconds, start_nimg, lineage)
    snaps.clear()
    return info


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
    if saved is not None and saved.get("mlflow_run_id"):
        try:
            mlflow.tracking.MlflowClient().get_run(saved["mlflow_run_id"])
        except mlflow.exceptions.MlflowException:
            print(f"MLflow run {saved['mlflow_run_id']} of the checkpoint is gone; logging to a new run")
        else:
            run = mlflow.start_run(run_id=saved["mlflow_run_id"])
            mlflow.set_tag("ganpipe.resumed_at_kimg", f"{saved['nimg'] / 1000:g}")
            failure = run.data.tags.get("ganpipe.failure") if run.data else None
            if failure:  # what the orchestrator noted when the process died: history, no longer the state
                mlflow.set_tag("ganpipe.interrupted", failure)
                mlflow.tracking.MlflowClient().delete_tag(run.info.run_id, "ganpipe.failure")
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


def _finish(
    snaps: Snapshots,
    tmp: Path,
    st: dict,
    run: mlflow.ActiveRun,
    manifest: dict,
    config: dict,
    device: torch.device,
    seconds: float,
    start_nimg: int,
    lineage: dict,
) -> dict:
    """Assemble the stage outputs: checkpoint.pt (the best snapshot: evaluation and registration use it),
    last.pt (the final training state, as StudioGAN keeps "best" and "current"), samples.png (the best
    snapshot's grid), log.jsonl, curves.csv and run.json."""
    shutil.copyfile(snaps.best_path, tmp / "checkpoint.pt")
    shutil.copyfile(snaps.latest(), tmp / "last.pt")
    shutil.copyfile(snaps.best_png, tmp / "samples.png")
    (tmp / "log.jsonl").write_text(log_text(st["log"]))
    write_curves(st["log"], tmp / CURVES)
    mlflow.log_artifact(str(tmp / "log.jsonl"))
    info = {
        "mlflow_run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "kimg": st["nimg"] / 1000,
        "steps": st["step"],
        "best_kimg": st["best"]["kimg"],
        "best_quick_kid": st["best"]["quick_kid"],
        "resumed_from_kimg": start_nimg / 1000 if start_nimg else None,
        "device": str(device),
        "seconds": round(seconds, 2),
        "images_per_second": round((st["nimg"] - start_nimg) / seconds, 1),
        "data_sha256": manifest["sha256"],
        "data_source": manifest["source"],
        "data_dvc_md5": lineage["data_dvc_md5"],
        "git_commit": lineage["git_commit"],
        "generator_config": config,
    }
    write_json(tmp / "run.json", info)
    return info
