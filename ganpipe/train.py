"""The `train` stage: adversarial training of the generator, tracked in MLflow.

Length and snapshot cadence are in kimg (thousands of real images shown to D), as in StyleGAN2-ADA.
Each snapshot logs a fixed-noise grid of the EMA generator (with its step, so the MLflow UI pages
through them), appends a JSON line to `log.jsonl` and rewrites the checkpoint.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ganpipe import tracking
from ganpipe.checkpoint import save_checkpoint
from ganpipe.data import load_split, read_manifest
from ganpipe.device import resolve_device
from ganpipe.errors import DataError
from ganpipe.images import grid, save_png
from ganpipe.io import atomic_dir, write_json
from ganpipe.models import build_discriminator, build_generator, generator_config, init_weights, sample
from ganpipe.params import Params
from ganpipe.versioning import locked_hash

SECTIONS = ("base", "model", "train")  # what this stage reads; dvc.yaml lists the same
GRID_SEED0 = 10_000_000  # fixed-noise grid seeds, far from evaluation seeds


def d_loss_nonsaturating(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss of the GAN game (Goodfellow et al. 2014): -log(1 - s(D(fake))) - log s(D(real))."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def g_loss_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: -log s(D(fake)), strong gradients early in training."""
    return F.softplus(-fake_logits).mean()


@torch.no_grad()
def ema_update(G_ema: torch.nn.Module, G: torch.nn.Module, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.lerp_(p, 1.0 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def num_classes_of(manifest: dict, labels: np.ndarray) -> int:
    """Classes of a dataset for a conditional model; a dataset without labels cannot condition one."""
    k = int(manifest.get("num_classes") or 0)
    if k < 2:
        raise DataError(f"model.conditional is true but the dataset {manifest['source']!r} has "
                        f"{k} class label{'s' if k != 1 else ''}; set model.conditional: false")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < k:
        raise DataError(f"labels outside 0..{k - 1} in the prepared data; re-run `ganpipe prepare`")
    return k


def train(params: Params, prepared_dir: str | Path, out_dir: str | Path, root: str | Path = ".") -> dict:
    """Train on the prepared train split; write checkpoint, run info, log and final grid to `out_dir`."""
    base, mp, tp = params.base, params.model, params.train
    manifest = read_manifest(prepared_dir)
    images, labels = load_split(prepared_dir, "train")
    if len(images) < tp.batch_size:
        raise DataError(f"train split has {len(images)} images, fewer than train.batch_size = {tp.batch_size}")
    device = resolve_device(base.device)
    torch.manual_seed(base.seed)
    np.random.seed(base.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    x_all = torch.from_numpy(np.array(images)).to(device)  # uint8 copy of the memmap; small datasets fit
    num_classes = num_classes_of(manifest, labels) if mp.conditional else 0
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    config = generator_config(mp.model_dump(), manifest["channels"], manifest["resolution"], num_classes)
    if num_classes:
        config["class_names"] = list(manifest["class_names"])
    G = build_generator(config).to(device)
    D = build_discriminator(mp.arch, config["channels"], config["resolution"], mp.d_channels, num_classes).to(device)
    G.apply(init_weights)
    D.apply(init_weights)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G = torch.optim.Adam(G.parameters(), lr=tp.lr, betas=(tp.beta1, tp.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=tp.lr, betas=(tp.beta1, tp.beta2))
    ema_beta = 0.5 ** (tp.batch_size / (tp.ema_kimg * 1000)) if tp.ema_kimg > 0 else 0.0
    shuffle = torch.Generator(device="cpu").manual_seed(base.seed)
    grid_seeds = list(range(GRID_SEED0, GRID_SEED0 + tp.grid_size))

    total_img = int(round(tp.total_kimg * 1000))
    snapshot_img = int(round(tp.snapshot_kimg * 1000))
    tracking.configure(root)
    exp_id = tracking.experiment_id(base.experiment, root)

    with atomic_dir(out_dir) as tmp, mlflow.start_run(experiment_id=exp_id) as run:
        run_id = run.info.run_id
        mlflow.log_params({**params.flat(*SECTIONS), "data.sha256": manifest["sha256"],
                           "data.source": manifest["source"], "data.resolution": manifest["resolution"],
                           "data.train_images": len(images)})
        dvc_md5 = locked_hash(root, os.path.relpath(Path(prepared_dir).resolve(), Path(root).resolve()))
        tracking.log_dataset(prepared_dir, manifest, dvc_md5)
        commit = tracking.git_commit(root)
        mlflow.set_tags({"ganpipe.stage": "train", "ganpipe.device": str(device),
                         "ganpipe.data_sha256": manifest["sha256"],
                         "ganpipe.params_hash": params.section_hash(*SECTIONS),
                         "mlflow.source.git.commit": commit})
        log_path = tmp / "log.jsonl"
        pending: list[tuple[int, torch.Tensor]] = []  # (nimg, [loss_G, loss_D]) still on device
        nimg, step, next_snapshot = 0, 0, snapshot_img
        perm, pos = torch.randperm(len(x_all), generator=shuffle).to(device), 0
        t0 = time.perf_counter()

        def snapshot() -> None:
            series = []
            if pending:
                values = torch.stack([v for _, v in pending]).cpu().tolist()  # one host sync per snapshot
                for (n, _), (lg, ld) in zip(pending, values):
                    series += [("loss_G", lg, n), ("loss_D", ld, n)]
                pending.clear()
            tracking.log_metric_series(run_id, series)
            img = grid(sample(G_ema, grid_seeds).numpy())
            mlflow.log_image(np.asarray(img), key="samples", step=nimg)
            save_png(img, tmp / "samples.png")
            save_checkpoint(tmp / "checkpoint.pt", {
                "G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
                "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(), "nimg": nimg, "step": step,
                "torch_rng": torch.get_rng_state(), "shuffle_rng": shuffle.get_state(),
                "generator_config": config, "params": params.model_dump(mode="json"),
                "mlflow_run_id": run_id, "data_sha256": manifest["sha256"]})
            last = {"kimg": nimg / 1000, "step": step, "seconds": round(time.perf_counter() - t0, 3)}
            if series:
                last.update(loss_G=series[-2][1], loss_D=series[-1][1])
            with open(log_path, "a") as f:
                f.write(json.dumps(last) + "\n")

        with tqdm(total=total_img, unit="img", unit_scale=True, desc="train", mininterval=2.0) as bar:
            while nimg < total_img:
                if pos + tp.batch_size > len(perm):
                    perm, pos = torch.randperm(len(x_all), generator=shuffle).to(device), 0
                idx = perm[pos:pos + tp.batch_size]
                real = x_all[idx].float().div_(127.5).sub_(1.0)
                pos += tp.batch_size
                # Fakes get the real batch's classes: G sees the data's class frequencies.
                c = y_all[idx] if num_classes else None
                z = torch.randn(tp.batch_size, mp.z_dim, device=device)
                fake = G(z, c)
                loss_D = d_loss_nonsaturating(D(real, c), D(fake.detach(), c))
                opt_D.zero_grad(set_to_none=True)
                loss_D.backward()
                opt_D.step()
                loss_G = g_loss_nonsaturating(D(fake, c))
                opt_G.zero_grad(set_to_none=True)
                loss_G.backward()
                opt_G.step()
                ema_update(G_ema, G, ema_beta)
                nimg += tp.batch_size
                step += 1
                if step % tp.log_every_steps == 0:
                    pending.append((nimg, torch.stack([loss_G.detach(), loss_D.detach()])))
                bar.update(tp.batch_size)
                if nimg >= next_snapshot or nimg >= total_img:
                    snapshot()
                    next_snapshot += snapshot_img
        seconds = time.perf_counter() - t0
        mlflow.log_metrics({"train_images_per_second": nimg / seconds}, step=nimg)
        mlflow.log_artifact(str(log_path))
        info = {"mlflow_run_id": run_id, "experiment_id": exp_id, "kimg": nimg / 1000, "steps": step,
                "device": str(device), "seconds": round(seconds, 2),
                "images_per_second": round(nimg / seconds, 1), "data_sha256": manifest["sha256"],
                "data_source": manifest["source"], "data_dvc_md5": dvc_md5,
                "git_commit": commit,
                "generator_config": config}
        write_json(tmp / "run.json", info)
    return info
