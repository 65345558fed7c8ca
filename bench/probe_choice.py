"""Benchmark of the snapshot probe: what each way of choosing the output snapshot costs, and how good a
snapshot it chooses. One training on the shipped params.yaml (or --kimg), every snapshot's EMA generator
kept in memory, then, side by side on those snapshots:

- InceptionV3 features of the probe's fixed-seed fakes (the first N of `--images` seeds) at every snapshot,
  timed: a strategy's cost is the fakes it pushes through InceptionV3 times the measured seconds per image
  (its reals are cached after a dataset's first training; that one-off cost is reported apart);
- the strategies: the old probe (quick KID on 128 images at every snapshot, the lowest wins), quick KID on
  N images at the last K snapshots (lowest wins), the same with "a later snapshot wins unless the paired
  bootstrap (same seeds, same reals) shows it worse", and the last snapshot alone (no probe);
- the truth: the evaluate stage's protocol (eval.* of params.yaml: FID with its bootstrap interval, KID) on
  the last `--score-last` snapshots and on every snapshot any strategy chose.

A strategy chooses well when its snapshot's FID is within the bootstrap interval of the old probe's choice
(or better); it is cheap when its cost is at most 10% of the train stage (pure training + probe).

    .venv/bin/python bench/probe_choice.py [--kimg 100] [--score-last 4] [--out bench/results]

A fresh ganpipe cache (a temp dir) is used, so nothing of an earlier run is reused.
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
    ap.add_argument("--images", type=int, default=128, help="probe images per snapshot (the old probe's)")
    ap.add_argument("--score-last", type=int, default=4, help="snapshots scored by the protocol (the last N)")
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
    from ganpipe.evaluation.kid import kernel_inception_distance, paired_bootstrap_kid
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

    kept: dict[int, torch.nn.Module] = {}
    snapshot = Trainer.snapshot

    def keeping(self):
        snapshot(self)
        kept[self.state.nimg] = copy.deepcopy(self.engine.G_ema).eval()

    Trainer.snapshot = keeping
    # the training with the probe on the tiny net only (milliseconds), so that `train_seconds` is the
    # training; every strategy's InceptionV3 probe cost is measured below on the kept snapshots
    p = p.model_copy(update={"train": p.train.model_copy(update={"snapshot_extractor": "tiny"})})
    t = time.perf_counter()
    info = loop.train(p, lay.prepared_dir, lay.models_dir, lay.root)
    train_s = time.perf_counter() - t
    Trainer.snapshot = snapshot

    images, _ = load_split(lay.prepared_dir, "train")
    idx = probes.real_subset(len(images), args.images, p.base.seed)
    t = time.perf_counter()
    real = extractor.extract(np.asarray(images[idx]), 64).astype(np.float64)
    reals_s = time.perf_counter() - t
    seeds = list(range(probes.PROBE_SEED0, probes.PROBE_SEED0 + args.images))
    t = time.perf_counter()
    fakes = {nimg: extractor.extract(sample(G, seeds, 64), 64).astype(np.float64) for nimg, G in kept.items()}
    per_image_s = (time.perf_counter() - t) / (len(kept) * len(seeds))
    order = sorted(kept)

    def quick_kid(nimg: int, n: int) -> float:
        return kernel_inception_distance(real[:n], fakes[nimg][:n], subset_size=n, subsets=1)[0]

    def quick_kid_std(nimg: int, n: int) -> tuple[float, float]:
        return probes.quick_kid(real[:n], fakes[nimg][:n])  # as the stage measures it

    def lowest(last: int, n: int) -> int:
        return min(order[-last:], key=lambda k: quick_kid(k, n))

    def later_unless_worse(last: int, n: int) -> int:
        best = order[-last]
        for nimg in order[-last + 1 :]:
            # KID(later) - KID(best) over paired resamples: the later one wins unless it is worse in 90%
            _, reps = paired_bootstrap_kid(real[:n], fakes[best][:n], fakes[nimg][:n], 200, np.random.default_rng(0))
            if np.quantile(reps, 0.1) <= 0:
                best = nimg
        return best

    def later_within_noise(last: int, n: int) -> int:
        # the stage's rule (probes.later_wins): the later one wins unless its KID exceeds the lowest so far
        # by more than its own bootstrap std
        best, lowest = order[-last], quick_kid(order[-last], n)
        for nimg in order[-last + 1 :]:
            kid, std = quick_kid_std(nimg, n)
            if probes.later_wins(kid, std, lowest):
                best = nimg
            lowest = min(lowest, kid)
        return best

    strategies = {"old: 128 images, every snapshot, lowest": (lowest(len(order), 128), len(order) * 128)}
    for last in (2, 3, 4, 5):
        for n in (32, 64, 128):
            strategies[f"{n} images, last {last}, lowest"] = (lowest(last, n), last * n)
            strategies[f"{n} images, last {last}, later unless worse"] = (later_unless_worse(last, n), last * n)
            strategies[f"{n} images, last {last}, later within 1 std"] = (later_within_noise(last, n), last * n)
    strategies["last snapshot, no probe"] = (order[-1], 0)

    truth: dict[int, dict] = {}

    def scored(nimg: int) -> dict:
        if nimg not in truth:
            r = score_generator(kept[nimg], extractor, ref, p.eval)
            keys = ("fid", "fid_ci_low", "fid_ci_high", "kid", "recall", "coverage")
            truth[nimg] = {"kimg": nimg / 1000, **{k: round(r[k], 5) for k in keys if k in r}}
        return truth[nimg]

    for nimg in order[-args.score_last :]:
        scored(nimg)
    old = scored(strategies["old: 128 images, every snapshot, lowest"][0])
    rows = []
    for name, (nimg, num) in strategies.items():
        cost = num * per_image_s
        chosen = scored(nimg)
        rows.append(
            {
                "strategy": name,
                "chosen_kimg": nimg / 1000,
                "fid": chosen["fid"],
                "kid": chosen["kid"],
                "inception_images": num,
                "seconds": round(cost, 1),
                "share_of_train_stage": round(cost / (train_s + cost), 4),
                "within_old_interval": bool(chosen["fid"] <= old["fid_ci_high"]),
            }
        )
    result = {
        "benchmark": "probe_choice",
        "date": date.today().isoformat(),
        "command": "python " + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "total_kimg": p.train.total_kimg,
        "snapshot_kimg": p.train.snapshot_kimg,
        "train_seconds_without_probe": round(train_s, 1),
        "inception_seconds_per_image": round(per_image_s, 4),
        "probe_reals_seconds_first_run": round(reals_s, 1),
        "stage_best_kimg": info["best_kimg"],
        "strategies": rows,
        "snapshots_scored": [truth[k] for k in sorted(truth)],
        "quick_kid_128_by_kimg": {f"{n / 1000:g}": round(quick_kid(n, 128), 5) for n in order},
    }
    out = Path(args.out) / f"probe_choice-cpu-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
