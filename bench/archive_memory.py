"""Peak memory of `ganpipe prepare` on a hostile zip: 64 members of 255 MiB of zeros each (~17 MB
deflated), each just under the per-member cap, named like images. Before the in-flight budget the main
process held a whole task of them at once (64 x 255 MiB = 16 GiB); now the bytes read ahead are bounded
in total (ganpipe.data.prepare.INFLIGHT_BYTES).

The zeros are not images, so each is a skip ("not an image"); a few real PNGs make prepare succeed.
Two runs: the 64 big members alone (in-process: fewer items than INLINE_BELOW) and with enough small
PNGs that a worker pool converts them (the big members travel to the workers). Each `ganpipe prepare`
runs in a child process; its peak is the RSS of the whole process tree (child + pool workers) polled
every 50 ms, and the exact peak of the largest single process in it (os.wait4's ru_maxrss).

    .venv/bin/python bench/archive_memory.py [--members 64] [--member-mib 255] [--out bench/results]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from prepare_speed import _tree_rss  # the same process-tree sampler as the folder benchmark

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_zip(path: Path, members: int, member_mib: int, pngs: int) -> None:
    """`members` members of zeros (written 1 MiB at a time: building never holds a member) and `pngs` real
    8x8 PNGs, in two class folders."""
    chunk = bytes(2**20)
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(members):
            with z.open(f"class_{'ab'[i % 2]}/img_{i:03d}.png", "w", force_zip64=True) as f:
                for _ in range(member_mib):
                    f.write(chunk)
        for i in range(pngs):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
            z.writestr(f"class_{'ab'[i % 2]}/real_{i:04d}.png", buf.getvalue())


def run_prepare(project: Path, data: dict) -> dict:
    """`ganpipe prepare` in a child process: seconds, peak tree RSS (polled), peak single-process RSS."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(data)
    project.mkdir(parents=True, exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    t0 = time.perf_counter()
    with open(project / "prepare.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ganpipe", "-C", str(project), "prepare"], stdout=log, stderr=subprocess.STDOUT
        )
        peak, done = 0, threading.Event()

        def sample():
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tree_rss(proc.pid))
                time.sleep(0.05)

        th = threading.Thread(target=sample)
        th.start()
        # wait4: this child's own resource use, which includes the pool workers it waited for
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        th.join()
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"prepare failed:\n{(project / 'prepare.log').read_text()}")
    manifest = json.loads((project / "data" / "prepared" / "manifest.json").read_text())
    return {
        "seconds": round(seconds, 1),
        "peak_tree_rss_mib": round(peak / 2**20),
        "peak_process_rss_mib": round(usage.ru_maxrss / 1024),  # KiB on Linux: the largest single process
        "images": manifest["counts"]["train"]["images"] + manifest["counts"]["test"]["images"],
        "skipped": manifest["skipped"]["by_reason"],
    }


def main() -> None:
    from ganpipe.data.archives import MAX_MEMBER_BYTES
    from ganpipe.data.prepare import INFLIGHT_BYTES, INLINE_BELOW

    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=64)
    ap.add_argument("--member-mib", type=int, default=255)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    assert args.member_mib * 2**20 <= MAX_MEMBER_BYTES, "members over the cap are skipped unread: nothing to measure"
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "members": args.members,
        "member_mib": args.member_mib,
        "inflight_budget_mib": INFLIGHT_BYTES // 2**20,
        "runs": {},
    }
    work = Path(tempfile.mkdtemp(prefix="ganpipe-bench-"))
    try:
        runs = {"in-process": 8, "worker pool": INLINE_BELOW}  # real PNGs added to the big members
        for name, pngs in runs.items():
            path = work / f"{name.replace(' ', '-')}.zip"
            t = time.perf_counter()
            make_zip(path, args.members, args.member_mib, pngs)
            result.setdefault("zip_mb", round(path.stat().st_size / 1e6, 1))
            print(f"{name}: made {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t:.0f}s")
            data = {"source": "imagefolder", "path": str(path), "labels": "folders", "min_images": 2}
            data.update(on_error="skip", resolution=8, channels=3, workers=0)
            row = run_prepare(work / name.replace(" ", "-"), data)
            result["runs"][name] = {"items": args.members + pngs, **row}
            print(name, json.dumps(row), flush=True)
            shutil.rmtree(work / name.replace(" ", "-"))
            path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out) / f"archive_memory-cpu-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
