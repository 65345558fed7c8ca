"""Benchmark of `prepare` on an image folder, side by side with a plain single-process Pillow loop.

1. Speed: a folder of N JPEGs (made here, 256x256, quality 90) prepared to 64x64 RGB by ganpipe
   (worker processes, reduced-scale JPEG decoding) and by a plain loop doing the same
   decode-convert-resize(Lanczos)-store in one process. Same files, same run, ratio reported.
2. Memory: the peak RSS of the whole `ganpipe prepare` process tree (main + workers, sampled every
   50 ms) on a folder of M small 64x64 images, and on M/10 of them: it must not grow with M.

    .venv/bin/python bench/prepare_speed.py [--images 20000] [--memory-images 100000] [--out bench/results]
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
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_jpegs(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """n distinct JPEGs: smooth random colour fields with noise (photo-like entropy, not flat)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        c = rng.uniform(0, 255, (3, 3))
        img = (c[:, 0, None, None] * xx + c[:, 1, None, None] * yy + c[:, 2, None, None] * (1 - xx) * yy) / 1.5
        img = img + rng.normal(0, 12, img.shape)
        arr = np.clip(img, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(arr).save(sub / f"{i:06d}.jpg", quality=90)


def plain_loop(folder: Path, resolution: int, out: Path) -> float:
    """The reference: one process, Pillow decode + RGB + centre square + Lanczos resize + one .npy."""
    t0 = time.perf_counter()
    files = sorted(folder.rglob("*.jpg"))
    arr = np.empty((len(files), 3, resolution, resolution), np.uint8)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            arr[i] = np.asarray(im.resize((resolution, resolution), Image.Resampling.LANCZOS)).transpose(2, 0, 1)
    np.save(out, arr)
    return time.perf_counter() - t0


def _tree_pids(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in open(f"/proc/{p}/task/{t}/children").read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        pids.append(p)
    return pids


def _proc_kib(path: str, field: str) -> int:
    try:
        return next((int(x.split()[1]) for x in open(path) if x.startswith(field)), 0)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0


def _tree_rss(pid: int) -> int:
    """Resident bytes of pid and all its descendants (pages shared between them count once per process)."""
    return sum(_proc_kib(f"/proc/{p}/status", "VmRSS:") for p in _tree_pids(pid)) * 1024


def _tree_pss(pid: int) -> int:
    """Proportional set size of pid and its descendants: each shared page split among its sharers, so the
    sum is the tree's real memory (a forked worker's copy-on-write pages are not counted twice)."""
    return sum(_proc_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in _tree_pids(pid)) * 1024


def run_prepare(project: Path, data: dict) -> tuple[float, int, int, dict]:
    """`ganpipe prepare` in a subprocess: (seconds, peak tree RSS, peak main RSS, manifest)."""
    from tests.conftest import shipped_params

    raw = shipped_params()
    raw["data"].update(data)
    project.mkdir(parents=True, exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ganpipe", "-C", str(project), "prepare"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak, peak_main, done = 0, 0, threading.Event()

    def sample():
        nonlocal peak, peak_main
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            peak_main = max(peak_main, _proc_kib(f"/proc/{proc.pid}/status", "VmRSS:") * 1024)
            time.sleep(0.05)

    th = threading.Thread(target=sample)
    th.start()
    out = proc.communicate()[0]
    done.set()
    th.join()
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"prepare failed:\n{out}")
    return seconds, peak, peak_main, json.loads((project / "data" / "prepared" / "manifest.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--memory-images", type=int, default=100000)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ganpipe-bench-"))
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
    }
    try:
        t = time.perf_counter()
        make_jpegs(work / "jpegs", args.images, 256)
        print(f"made {args.images} 256x256 JPEGs in {time.perf_counter() - t:.0f}s", flush=True)
        common = {
            "source": "imagefolder",
            "path": str(work / "jpegs"),
            "labels": "none",
            "resolution": 64,
            "channels": 3,
            "min_images": 2,
        }
        ours, _, _, m = run_prepare(work / "p1", common)
        plain = plain_loop(work / "jpegs", 64, work / "plain.npy")
        ours2, _, _, _ = run_prepare(work / "p2", common)  # twice, around the reference: page cache fair
        best = min(ours, ours2)
        result["speed"] = {
            "images": args.images,
            "source": "256x256 JPEG q90",
            "target": "64x64 RGB",
            "ganpipe_prepare_s": round(best, 2),
            "ganpipe_runs_s": [round(ours, 2), round(ours2, 2)],
            "plain_pillow_loop_s": round(plain, 2),
            "ratio": round(plain / best, 2),
            "ganpipe_images_per_s": round(args.images / best),
            "prepared": m["counts"],
        }
        print(json.dumps(result["speed"]), flush=True)
        shutil.rmtree(work / "jpegs")

        mem = {}
        for n in (args.memory_images // 10, args.memory_images):
            make_jpegs(work / f"small{n}", n, 64, seed=1)
            seconds, peak, peak_main, m = run_prepare(work / f"m{n}", {**common, "path": str(work / f"small{n}")})
            mem[str(n)] = {
                "seconds": round(seconds, 1),
                "peak_tree_rss_mib": round(peak / 2**20),
                "peak_main_rss_mib": round(peak_main / 2**20),
                "shards": len(m["shards"]["train"]["files"]) + len(m["shards"]["test"]["files"]),
            }
            print(n, json.dumps(mem[str(n)]), flush=True)
            shutil.rmtree(work / f"small{n}")
        result["memory"] = {"image_size": "64x64 JPEG -> 64x64 RGB", **mem}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out) / f"prepare_speed-cpu-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
