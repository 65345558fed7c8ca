"""Benchmark of training data past one machine's memory: streaming from the shards vs the split in memory.

Two parts, in one run:

1. Scale: a 64 px RGB image folder of `--images` distinct images (a .tar of PNGs, made here, 200k train
   images by default) goes through `ganpipe prepare`, `ganpipe ref-stats` and `ganpipe train`
   (`--train-kimg` kimg, train.data_loading: auto, which streams it) as child processes, each with the
   peak memory of its whole process tree (DataLoader workers and prepare's decoders included) sampled
   every 50 ms: the sum of RSS (pages a forked worker shares with its parent count once per process)
   and the sum of PSS (each shared page split among its sharers: the tree's real memory). Then, side by
   side on the prepared split, one full pass of the training's data path each way (no networks): the
   streamed one and the in-memory one (reading the split into one tensor, what training did before).
2. Speed: training on the digits at 32 px (params.yaml's defaults, `--speed-kimg` kimg, no snapshots but
   the last, tiny snapshot extractor), in memory vs streamed with 2 and 0 DataLoader workers, `--rounds`
   rounds alternating the three, img/s of the training loop from models/run.json; the median of the
   rounds' ratios (each round's runs one after the other: paired against the machine's drifting load).

    .venv/bin/python bench/data_scale.py [--images 202021] [--train-kimg 10] [--speed-kimg 20] [--rounds 5]

Needs ~6 GB of free disk in the temp dir (deleted at the end) and the InceptionV3 weights (make install).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from prepare_speed import _tree_pss, _tree_rss  # noqa: E402  the process-tree samplers of the prepare benchmark

MIB = 2**20
PASS_SCRIPT = """
import sys, time, numpy as np, torch
from ganpipe.core.params import load_params
from ganpipe.data.prepare import load_split
from ganpipe.training.batches import batches_of
from ganpipe.training.distributed import World
from ganpipe.training.state import TrainState
p = load_params(sys.argv[1] + "/params.yaml")
tp = p.train.model_copy(update={"data_loading": sys.argv[2]})
images, labels = load_split(sys.argv[1] + "/data/prepared", "train")
t0 = time.perf_counter()
b, how = batches_of(tp, images, labels, False, 0, World(), torch.device("cpu"), False)
state = TrainState(perm=b.permutation())
steps = len(images) // tp.batch_size
for _ in range(steps):
    b.next(state)
b.close()
print(how, steps * tp.batch_size / (time.perf_counter() - t0))
"""


def make_folder(path: Path, num: int, resolution: int) -> float:
    """A .tar of `num` distinct RGB PNGs: a two-colour gradient and a disc, all drawn from image i's seed."""
    t0 = time.perf_counter()
    yy, xx = np.mgrid[0:resolution, 0:resolution] / (resolution - 1)
    with tarfile.open(path, "w") as tar:
        for i in range(num):
            rng = np.random.default_rng(i)
            a, b, c = rng.integers(0, 256, (3, 3))
            t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) % 1.0
            img = a[:, None, None] * (1 - t) + b[:, None, None] * t
            cy, cx, r = rng.uniform(0, resolution, 2).tolist() + [rng.uniform(3, resolution / 3)]
            disc = (yy * (resolution - 1) - cy) ** 2 + (xx * (resolution - 1) - cx) ** 2 < r * r
            img[:, disc] = c[:, None]
            buf = io.BytesIO()
            Image.fromarray(img.transpose(1, 2, 0).astype(np.uint8)).save(buf, "PNG", compress_level=1)
            info = tarfile.TarInfo(f"img/{i:07d}.png")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    return time.perf_counter() - t0


def watched(cmd: list[str], cwd: Path) -> dict:
    """Run cmd; its seconds, output and the peaks of its process tree's summed RSS and PSS."""
    t0 = time.perf_counter()
    log = cwd / f"{cmd[-1].split()[0] if cmd[-1] else 'cmd'}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        peak = {"rss": 0, "pss": 0}
        done = threading.Event()

        def sample():
            n = 0
            while not done.is_set():
                peak["rss"] = max(peak["rss"], _tree_rss(proc.pid))
                if n % 4 == 0:  # smaps_rollup walks every mapping: a little slower
                    peak["pss"] = max(peak["pss"], _tree_pss(proc.pid))
                n += 1
                time.sleep(0.05)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        rc = proc.wait()
        done.set()
        th.join()
    text = log.read_text()
    if rc:
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}):\n{text[-3000:]}")
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_tree_rss_mib": round(peak["rss"] / MIB),
        "peak_tree_pss_mib": round(peak["pss"] / MIB),
        "output": text,
    }


def project(root: Path, **sections: dict) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in sections.items():
        raw[section].update(values)
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


def ganpipe(root: Path, stage: str) -> list[str]:
    return [sys.executable, "-m", "ganpipe", "-C", str(root), stage]


def scale(work: Path, num: int, resolution: int, train_kimg: float) -> dict:
    root = project(
        work / "scale",
        data={
            "source": "imagefolder",
            "path": str(work / "images.tar"),
            "resolution": resolution,
            "channels": 3,
            "test_fraction": 0.01,
        },
        train={"total_kimg": train_kimg, "snapshot_kimg": train_kimg / 2},
    )
    seconds_tar = make_folder(work / "images.tar", num, resolution)
    print(f"made {num} PNGs in {seconds_tar:.0f} s ({(work / 'images.tar').stat().st_size / MIB:.0f} MiB tar)")
    out = {"images": num, "resolution": resolution, "make_tar_seconds": round(seconds_tar, 1)}
    for stage in ("prepare", "ref-stats", "train"):
        out[stage] = watched(ganpipe(root, stage), root)
        print(stage, {k: v for k, v in out[stage].items() if k != "output"}, flush=True)
    (work / "images.tar").unlink()
    manifest = json.loads((root / "data" / "prepared" / "manifest.json").read_text())
    info = json.loads((root / "models" / "run.json").read_text())
    out["train_images"] = manifest["counts"]["train"]["images"]
    out["train_split_mib"] = round(out["train_images"] * 3 * resolution**2 / MIB)
    out["train"]["images_per_second"] = info["images_per_second"]
    out["train"]["data_loading"] = next(
        line.split(": ", 1)[1] for line in out["train"]["output"].splitlines() if line.startswith("training data:")
    )
    for how in ("stream", "memory"):  # one full pass of the data path alone, each way
        r = watched([sys.executable, "-c", PASS_SCRIPT, str(root), how], root)
        r["images_per_second"] = round(float(r["output"].split()[-1]))
        out[f"data_pass_{how}"] = r
        print(f"data pass {how}", {k: v for k, v in r.items() if k != "output"}, flush=True)
    for stage in ("prepare", "ref-stats", "train", "data_pass_stream", "data_pass_memory"):
        out[stage]["output"] = out[stage]["output"][-1500:]
    return out


def speed(work: Path, kimg: float, rounds: int) -> dict:
    modes = {
        "memory": {"data_loading": "memory"},
        "stream_2_workers": {"data_loading": "stream", "data_workers": 2},
        "stream_0_workers": {"data_loading": "stream", "data_workers": 0},
    }
    root = project(work / "digits", train={"total_kimg": kimg, "snapshot_kimg": kimg, "snapshot_extractor": "tiny"})
    subprocess.run(ganpipe(root, "prepare"), check=True, capture_output=True)
    rates = {m: [] for m in modes}
    for r in range(rounds):
        for mode, values in modes.items():
            project(root, train={"total_kimg": kimg, "snapshot_kimg": kimg, "snapshot_extractor": "tiny", **values})
            shutil.rmtree(root / "models", ignore_errors=True)
            proc = subprocess.run(ganpipe(root, "train"), capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"train ({mode}) failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
            rates[mode].append(json.loads((root / "models" / "run.json").read_text())["images_per_second"])
            print(f"round {r} {mode}: {rates[mode][-1]} img/s", flush=True)
    med = {m: statistics.median(v) for m, v in rates.items()}
    out = {"kimg": kimg, "rounds": rounds, "images_per_second": rates, "median_images_per_second": med}
    for mode in ("stream_2_workers", "stream_0_workers"):
        # each round's runs ran one after the other: their ratio is paired (the machine's load drifts)
        paired = [s / m for s, m in zip(rates[mode], rates["memory"])]
        out[f"ratio_{mode}_to_memory"] = {
            "median_of_round_ratios": round(statistics.median(paired), 3),
            "round_ratios": [round(r, 3) for r in paired],
            "ratio_of_medians": round(med[mode] / med["memory"], 3),
        }
    return out


def _commit() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=202021, help="images in the folder (1%% held out: 200k train)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--train-kimg", type=float, default=10.0)
    ap.add_argument("--speed-kimg", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--parts",
        default="speed,scale",
        help="speed, scale or both; a part run alone replaces that part in today's result file",
    )
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="data-scale-"))
    os.environ["GANPIPE_CACHE_DIR"] = str(work / "cache")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        import torch

        kind = "cuda" if torch.cuda.is_available() else "cpu"  # base.device: auto trains on CUDA when there is one
        out = Path(args.out) / f"data_scale-{kind}-{date.today().isoformat()}.json"
        result = json.loads(out.read_text()) if out.exists() else {}
        result.update(
            date=date.today().isoformat(),
            machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
            budget={"peak_tree_rss_bytes_under": 1.5e9, "stream_to_memory_at_least": 0.9},
        )
        parts = args.parts.split(",")
        if "speed" in parts:
            result["speed_digits_32px"] = speed(work, args.speed_kimg, args.rounds)
            result["speed_digits_32px"]["commit"] = _commit()
        if "scale" in parts:
            result["scale"] = scale(work, args.images, args.resolution, args.train_kimg)
            result["scale"]["commit"] = _commit()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "scale"}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
