"""Benchmark of the snapshot probes: what they cost in the train stage, and whether they choose as well as
the probe they replaced. One training on the shipped params.yaml (or --kimg), measured in one run.

- the probe now (`ganpipe.training.probes`): the collapse watch on the tiny net at every snapshot and a
  quick KID in InceptionV3 space at the last `train.snapshot_kid_last` snapshots; its seconds (the real
  features' set-up included) are measured inside the training, against the whole training's seconds;
- the probe before (up to 2026-12-02): InceptionV3 on `--old-images` (128) fakes at every snapshot and
  on as many reals once, the best quick KID chosen among all snapshots. Computed on the G_ema of every
  snapshot, kept in memory while training; its seconds are measured the same way;
- both choices scored by the evaluate stage's protocol (eval.* of params.yaml: FID with its bootstrap
  interval, KID), so "within the interval of the old choice" is read off the same numbers.

    .venv/bin/python bench/probe_choice.py [--kimg 100] [--out bench/results]

A fresh ganpipe cache (a temp dir) is used, so the probe's real features are computed as on a first run.
"""

from __future__ import annotations

import argparse
import copy
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
import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kimg", type=float, default=None, help="train.total_kimg (default: params.yaml's)")
    ap.add_argument("--old-images", type=int, default=128, help="images of the old probe (its default)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="probe-choice-"))
    os.environ["GANPIPE_CACHE_DIR"] = str(work / "cache")
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    from ganpipe.core.params import parse_params
    from ganpipe.core.paths import layout
    from ganpipe.data.prepare import load_split, prepare
    from ganpipe.evaluation.evaluate import score_generator
    from ganpipe.evaluation.features import build_extractor
    from ganpipe.evaluation.kid import kernel_inception_distance
    from ganpipe.evaluation.refstats import compute_ref_stats
    from ganpipe.nets.models import sample
    from ganpipe.training import loop, probes
    from ganpipe.training.trainer import Trainer

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    if args.kimg is not None:
        raw["train"]["total_kimg"] = args.kimg
    p = parse_params(raw)
    lay = layout(work / "project")
    lay.root.mkdir(parents=True)
    lay.params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    prepare(p.data, lay.prepared_dir)
    extractor = build_extractor(p.eval)
    ref = compute_ref_stats(extractor, p.eval.num_real, p.eval.batch_size, lay.prepared_dir, lay.ref_stats_path)

    probe_seconds = [0.0]
    kept: dict[int, torch.nn.Module] = {}

    def timed(fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                probe_seconds[0] += time.perf_counter() - t

        return wrapper

    build_probe, measure, snapshot = loop._build_probe, probes.Probe.measure, Trainer.snapshot
    loop._build_probe = timed(build_probe)
    probes.Probe.measure = timed(measure)

    def keeping(self):
        snapshot(self)
        kept[self.state.nimg] = copy.deepcopy(self.engine.G_ema).eval()

    Trainer.snapshot = keeping
    t = time.perf_counter()
    info = loop.train(p, lay.prepared_dir, lay.models_dir, lay.root)
    train_s = time.perf_counter() - t
    loop._build_probe, probes.Probe.measure, Trainer.snapshot = build_probe, measure, snapshot

    # the old probe on the same snapshots: InceptionV3 on N reals once and N fakes per snapshot
    t = time.perf_counter()
    images, _ = load_split(lay.prepared_dir, "train")
    idx = probes.real_subset(len(images), args.old_images, p.base.seed)
    real = extractor.extract(np.asarray(images[idx]), 64).astype(np.float64)
    seeds = list(range(probes.PROBE_SEED0, probes.PROBE_SEED0 + args.old_images))
    old_kid = {}
    for nimg, G in kept.items():
        fake = extractor.extract(sample(G, seeds, 64), 64).astype(np.float64)
        old_kid[nimg] = kernel_inception_distance(real, fake, subset_size=len(fake), subsets=1)[0]
    old_probe_s = time.perf_counter() - t
    old_best = min(old_kid, key=old_kid.get)
    new_best = round(info["best_kimg"] * 1000)

    def scored(nimg: int) -> dict:
        r = score_generator(kept[nimg], extractor, ref, p.eval)
        keys = ("fid", "fid_ci_low", "fid_ci_high", "kid", "recall", "coverage")
        return {"kimg": nimg / 1000, **{k: round(r[k], 5) for k in keys if k in r}}

    new_score = scored(new_best)
    old_score = new_score if old_best == new_best else scored(old_best)
    pure_s = train_s - probe_seconds[0]  # the training without any probe
    result = {
        "benchmark": "probe_choice",
        "date": date.today().isoformat(),
        "command": "python " + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "total_kimg": p.train.total_kimg,
        "snapshot_kimg": p.train.snapshot_kimg,
        "train_seconds": round(train_s, 1),
        "probe_now": {
            "seconds": round(probe_seconds[0], 1),
            "share_of_train_stage": round(probe_seconds[0] / train_s, 4),
            "snapshot_kid_images": p.train.snapshot_kid_images,
            "snapshot_kid_last": p.train.snapshot_kid_last,
            "chosen": new_score,
        },
        "probe_before": {
            "seconds": round(old_probe_s, 1),
            "share_of_train_stage": round(old_probe_s / (pure_s + old_probe_s), 4),
            "images": args.old_images,
            "chosen": old_score,
            "quick_kid_by_kimg": {f"{n / 1000:g}": round(v, 5) for n, v in old_kid.items()},
        },
        "new_choice_within_old_interval": bool(new_score["fid"] <= old_score.get("fid_ci_high", old_score["fid"])),
    }
    out = Path(args.out) / f"probe_choice-cpu-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
