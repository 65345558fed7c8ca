"""Training recipes side by side at the default length: which train.* values lower the default champion's
FID at about the same CPU cost per image (#17's goal: FID <= 28 on the digits in today's time budget).

    .venv/bin/python bench/recipe_search.py [--only NAME ...] [--parallel N] [--kimg K] [--bootstrap B]
                                            [--inception-weights PATH] [--out DIR]

Each recipe is params.yaml as shipped with a few values changed (RECIPES), trained in its own temp project
and scored by the `evaluate` stage's function (bench/loss_compare.py's `full_run`: prepare, reference
statistics, train, evaluate). `--parallel` recipes run at once, each in its own process: on a GPU these
small networks leave the device mostly idle, so several trainings share it. Training runs in fp32 (TF32 on
CUDA) as on a CPU; a GPU ranks the recipes for a CPU run to confirm (the same code and seeds, other
random streams: `seed-1` shows how far a seed alone moves the scores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name: the dotted params set on top of params.yaml as it is when the search runs (the names of
# bench/results/recipe_search-cpu-2026-12-04-*.json were measured against the defaults before that day's
# change, `old-default` here). All keep the networks and the images shown, so the CPU cost per image stays
# the default's, except where the comment says otherwise.
RECIPES: dict[str, dict] = {
    "default": {},
    "seed-1": {"base.seed": 1},
    "old-default": {"train.lr": 0.0002, "train.augment_policy": ["color", "translation", "cutout"]},
    "ema-0.5": {"train.ema_kimg": 0.5},
    "ema-2": {"train.ema_kimg": 2.0},
    "ema-4": {"train.ema_kimg": 4.0},
    "ema-10": {"train.ema_kimg": 10.0},  # StyleGAN2's half-life; ema_rampup caps it early in training
    "lr-1e-4": {"train.lr": 0.0001},
    "lr-4e-4": {"train.lr": 0.0004},
    "lr-4e-4-seed-1": {"train.lr": 0.0004, "base.seed": 1},
    "lr-8e-4": {"train.lr": 0.0008},
    "lr-4e-4-no-color": {"train.lr": 0.0004, "train.augment_policy": ["translation", "cutout"]},
    "lr-4e-4-no-color-seed-1": {"train.lr": 0.0004, "train.augment_policy": ["translation", "cutout"], "base.seed": 1},
    "lr-4e-4-translation": {"train.lr": 0.0004, "train.augment_policy": ["translation"]},
    "adam-0-0.99": {"train.beta1": 0.0, "train.beta2": 0.99},
    "hinge": {"train.loss": "hinge"},
    "lsgan": {"train.loss": "lsgan"},
    "aug-no-color": {"train.augment_policy": ["translation", "cutout"]},
    "aug-translation": {"train.augment_policy": ["translation"]},
    "no-augment": {"train.augment": False},
    "batch-32": {"train.batch_size": 32},  # twice the steps: ~1.2x the CPU time per image
    "batch-128": {"train.batch_size": 128},
    "r1-0.1": {"train.r1_gamma": 0.1},  # R1 differentiates D twice on the reals: ~1.3x
}


def recipe_params(name: str, kimg: float | None, weights: str | None, bootstrap: int | None) -> dict:
    from loss_compare import shipped_params

    raw = shipped_params()
    changes = {**RECIPES[name], "train.precision": "fp32"}
    if kimg is not None:
        changes["train.total_kimg"] = kimg
    if weights:
        changes["eval.inception_weights"] = weights
    if bootstrap is not None:
        changes["eval.bootstrap"] = bootstrap
    for key, value in changes.items():
        section, field = key.split(".")
        raw[section][field] = value
    return raw


def run_one(args) -> None:
    """One recipe in this process: its row as JSON on the last line of stdout."""
    from loss_compare import full_run

    raw = recipe_params(args.one, args.kimg, args.inception_weights, args.bootstrap)
    with tempfile.TemporaryDirectory(prefix=f"recipe-{args.one}-") as d:
        row = full_run(Path(d) / "project", args.one, raw)
    row.pop("_paths", None)
    print(json.dumps({"name": args.one, "changes": RECIPES[args.one], **row}), flush=True)


def pack_weights(dest: Path) -> None:
    """InceptionV3's weights (resolved as the evaluate stage does) rounded to bf16 and xz-compressed: 31 MB
    instead of 88, for a GPU machine that can be sent 64 MiB a call (bench/gpu.sh part 4)."""
    import io
    import lzma

    import torch

    from ganpipe.evaluation.inception import read_state_dict, resolve_weights

    sd = read_state_dict(resolve_weights(None, allow_download=False).path)
    buf = io.BytesIO()
    torch.save({k: v.bfloat16() if v.is_floating_point() else v for k, v in sd.items()}, buf)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    print(f"{dest}: {dest.stat().st_size / 1e6:.1f} MB")


def machine() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=sorted(RECIPES), default=None, help="these recipes (default: all)")
    ap.add_argument("--parallel", type=int, default=1, help="recipes trained at once (default 1)")
    ap.add_argument("--kimg", type=float, default=None, help="training length (default: params.yaml's)")
    ap.add_argument("--bootstrap", type=int, default=None, help="eval.bootstrap (0: no FID/KID intervals, faster)")
    ap.add_argument("--inception-weights", default=None, help="eval.inception_weights for every recipe")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--pack-weights", metavar="PATH", help="write bf16 InceptionV3 weights for bench/gpu.sh, and stop")
    ap.add_argument("--one", choices=sorted(RECIPES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # each project's own store
    if args.one:
        run_one(args)
        return
    if args.pack_weights:
        pack_weights(Path(args.pack_weights))
        return

    names = args.only or list(RECIPES)
    info = machine()
    kind = "cuda" if info["device"] != "cpu" else "cpu"
    out = Path(args.out) / f"recipe_search-{kind}-{date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // max(1, args.parallel))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    result = {
        "benchmark": "recipe_search",
        "date": date.today().isoformat(),
        "command": " ".join([".venv/bin/python", "bench/recipe_search.py", *sys.argv[1:]]),
        "machine": info,
        "parallel": args.parallel,
        "complete": False,
        "rows": [],
    }
    t0 = time.perf_counter()
    pending, running = list(names), {}
    logs = Path(tempfile.mkdtemp(prefix="recipe-search-"))  # each recipe's stdout: a file, never a full pipe

    def save() -> None:
        result["total_wall_seconds"] = round(time.perf_counter() - t0, 1)
        out.write_text(json.dumps(result, indent=2) + "\n")

    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            cmd = [sys.executable, __file__, "--one", name, *_forwarded(args)]
            with open(logs / name, "w") as log:
                running[name] = subprocess.Popen(cmd, env=env, stdout=log)
        time.sleep(0.5)
        for name, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            lines = (logs / name).read_text().strip().splitlines()
            try:
                row = json.loads(lines[-1])
            except (IndexError, json.JSONDecodeError):
                row = {"name": name, "changes": RECIPES[name], "error": f"exit {proc.returncode}"}
            result["rows"].append(row)
            keys = ("fid", "kid", "recall", "coverage", "train_images_per_second", "error")
            print(f"{name}: " + ", ".join(f"{k} {row[k]}" for k in keys if k in row), flush=True)
            save()
    result["complete"] = True
    save()
    shutil.rmtree(logs)
    print(out)


def _forwarded(args) -> list[str]:
    out = []
    if args.kimg is not None:
        out += ["--kimg", str(args.kimg)]
    if args.bootstrap is not None:
        out += ["--bootstrap", str(args.bootstrap)]
    if args.inception_weights:
        out += ["--inception-weights", args.inception_weights]
    return out


if __name__ == "__main__":
    main()
