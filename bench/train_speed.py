"""Benchmark of the training step: `ganpipe.training.loop.train` vs a plain PyTorch loop, side by side in one run.

The plain loop is written like pytorch/examples' `dcgan/main.py` (D on real, D on fake.detach(), one
Adam step; G through D, one Adam step; BCE-with-logits), on the same DCGAN modules, the same images
held in memory and the same batch size: only the pipeline around the step differs (MLflow run, loss
logging, EMA generator, divergence checks, snapshots with grid, quick KID and checkpoint).

    .venv/bin/python bench/train_speed.py [--kimg 12] [--repeats 3] [--device auto] [--out bench/results]

Both report images/s over the training loop only (process start-up, imports and the MLflow run's
creation are outside both timings); runs alternate (ours, plain, ours, ...) so drifts hit both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ganpipe.core.device import resolve_device  # noqa: E402
from ganpipe.core.params import parse_params  # noqa: E402
from ganpipe.core.paths import layout  # noqa: E402
from ganpipe.data.prepare import load_split, prepare  # noqa: E402
from ganpipe.nets.models import build_discriminator, build_generator, generator_config  # noqa: E402
from ganpipe.training.loop import train  # noqa: E402


def shipped_params() -> dict:
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text())


def bench_params(kimg: float, device: str) -> dict:
    raw = shipped_params()
    raw["base"]["device"] = device
    raw["data"].update(resolution=32, channels=3)
    raw["model"].update(arch="dcgan", g_channels=64, d_channels=64, conditional=False)
    raw["train"].update(
        loss="nonsaturating",
        batch_size=64,
        total_kimg=kimg,
        snapshot_kimg=kimg / 2,
        d_steps=1,
        augment=False,
        r1_gamma=0.0,
        precision="fp32",
        compile=False,
        snapshot_extractor="tiny",
        snapshot_kid_images=128,
    )
    return raw


def plain_loop(images: np.ndarray, p, device: torch.device, kimg: float) -> float:
    """images/s of the pytorch/examples-style loop on the same networks and data."""
    torch.manual_seed(p.base.seed)
    config = generator_config(p.model.model_dump(), 3, 32)
    netG = build_generator(config).to(device)
    netD = build_discriminator("dcgan", 3, 32, p.model.d_channels).to(device)
    optD = torch.optim.Adam(netD.parameters(), lr=p.train.lr, betas=(p.train.beta1, p.train.beta2))
    optG = torch.optim.Adam(netG.parameters(), lr=p.train.lr, betas=(p.train.beta1, p.train.beta2))
    x_all = torch.from_numpy(np.array(images)).to(device)
    bs = p.train.batch_size
    ones, zeros = torch.ones(bs, device=device), torch.zeros(bs, device=device)
    total = int(kimg * 1000)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, nimg, perm, pos = time.perf_counter(), 0, torch.randperm(len(x_all), device=device), 0
    while nimg < total:
        if pos + bs > len(perm):
            perm, pos = torch.randperm(len(x_all), device=device), 0
        real = x_all[perm[pos : pos + bs]].float().div_(127.5).sub_(1.0)
        pos += bs
        netD.zero_grad()
        errD_real = F.binary_cross_entropy_with_logits(netD(real), ones)
        errD_real.backward()
        fake = netG(torch.randn(bs, p.model.z_dim, device=device))
        errD_fake = F.binary_cross_entropy_with_logits(netD(fake.detach()), zeros)
        errD_fake.backward()
        optD.step()
        netG.zero_grad()
        errG = F.binary_cross_entropy_with_logits(netD(fake), ones)
        errG.backward()
        optG.step()
        nimg += bs
    if device.type == "cuda":
        torch.cuda.synchronize()
    return nimg / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kimg", type=float, default=12.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    device = resolve_device(args.device)
    raw = bench_params(args.kimg, args.device)
    p = parse_params(raw)
    with tempfile.TemporaryDirectory() as d:
        lay = layout(d)
        os.environ["GANPIPE_CACHE_DIR"] = str(Path(d) / "cache")
        prepare(p.data, lay.prepared_dir)
        images, _ = load_split(lay.prepared_dir, "train")
        ours, plain = [], []
        for i in range(args.repeats):
            info = train(p, lay.prepared_dir, Path(d) / f"models-{i}", lay.root)
            ours.append(info["images_per_second"])
            plain.append(plain_loop(images, p, device, args.kimg))
            print(f"repeat {i + 1}: ganpipe {ours[-1]:.0f} img/s, plain loop {plain[-1]:.0f} img/s", flush=True)
    ratio = float(np.median(ours) / np.median(plain))
    result = {
        "benchmark": "train_speed",
        "date": date.today().isoformat(),
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "kimg": args.kimg,
        "batch_size": 64,
        "resolution": 32,
        "model": "dcgan g64 d64, 3 channels",
        "repeats": args.repeats,
        "ganpipe_images_per_second": ours,
        "plain_images_per_second": plain,
        "median_ratio": round(ratio, 3),
        "target_ratio": 0.95,
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"train_speed-{device.type}-{date.today().isoformat()}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
