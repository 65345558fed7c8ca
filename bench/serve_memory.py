"""Peak memory of answering one `ganpipe serve` request of serve.max_images images at the largest
resolution (resnet, 256 px, g_channels 64), generated serve.batch_size at a time vs in one pass.

Each configuration runs in a fresh process (peak RSS is per process). Results: bench/results/serve_memory-cpu-DATE.json.
    .venv/bin/python bench/serve_memory.py [--images 64] [--batches 16 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIG = {"arch": "resnet", "z_dim": 128, "g_channels": 64, "channels": 3, "resolution": 256, "num_classes": 0}


def one(batch: int, images: int) -> dict:
    from ganpipe.nets.models import build_generator
    from ganpipe.serving.pyfunc import generate_rows

    G = build_generator(CONFIG).eval()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    generate_rows(G, [(s, 1.0, None) for s in range(images)], {}, batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"batch_size": batch, "images": images, "peak_rss_mib": round(peak), "model_rss_mib": round(base)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one is not None:
        print(json.dumps(one(a.one, a.images)))
        return
    rows = [
        json.loads(
            subprocess.run(
                [sys.executable, __file__, "--one", str(b), "--images", str(a.images)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for b in a.batches
    ]
    out = Path(__file__).parent / "results" / f"serve_memory-cpu-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps({"config": CONFIG, "rows": rows}, indent=2) + "\n")
    for r in rows:
        print(
            f"{r['images']} images, batch {r['batch_size']}: peak RSS {r['peak_rss_mib']} MiB "
            f"(model alone {r['model_rss_mib']} MiB)"
        )


if __name__ == "__main__":
    main()
