"""Evaluation speed, measured side by side in one run on this machine.

1. Feature extraction: ganpipe's InceptionV3 pass vs torch-fidelity's `calculate_metrics` (FID only,
   so it extracts the same two image sets once each) on the same images and weights.
2. Re-evaluation: scoring the same generator twice under the same protocol (the second pass reads
   its generated features from the content-addressed cache).

Usage: .venv/bin/python bench/eval_speed.py [--images 100]   (prints one JSON object)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from ganpipe.core.params import load_params
from ganpipe.data.prepare import load_split, prepare
from ganpipe.evaluation.evaluate import score_generator
from ganpipe.evaluation.features import build_extractor
from ganpipe.evaluation.fidelity_peer import ImageTensors, weights_for_torch_fidelity
from ganpipe.evaluation.inception import resolve_weights
from ganpipe.evaluation.refstats import compute_ref_stats
from ganpipe.nets.dcgan import init_weights
from ganpipe.nets.models import build_generator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100, help="images per set")
    n = ap.parse_args().images
    work = Path(tempfile.mkdtemp(prefix="ganpipe-bench-"))
    os.environ["GANPIPE_CACHE_DIR"] = str(work / "cache")  # cold caches: nothing from earlier runs
    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    prepare(p.data, work / "prepared")
    images, _ = load_split(work / "prepared", "train")
    a = torch.from_numpy(images[:n].copy()).expand(-1, 3, -1, -1).contiguous()
    b = torch.from_numpy(images[n : 2 * n].copy()).expand(-1, 3, -1, -1).contiguous()
    out: dict = {"images_per_set": n, "threads": torch.get_num_threads()}

    # 1. extraction, side by side
    import torch_fidelity

    weights = weights_for_torch_fidelity(resolve_weights(None, allow_download=False).path, work / "inception.pth")
    ext = build_extractor(p.eval)
    ext.extract(a[:2], 2)  # warm-up, like torch-fidelity's first batch
    t0 = time.perf_counter()
    ext.extract(a, p.eval.batch_size)
    ext.extract(b, p.eval.batch_size)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    torch_fidelity.calculate_metrics(
        input1=ImageTensors(a),
        input2=ImageTensors(b),
        fid=True,
        cuda=False,
        cache=False,
        verbose=False,
        batch_size=p.eval.batch_size,
        feature_extractor_weights_path=str(weights),
    )
    theirs = time.perf_counter() - t0
    out["extraction"] = {
        "ganpipe_s": round(ours, 2),
        "torch_fidelity_s": round(theirs, 2),
        "ganpipe_images_per_s": round(2 * n / ours, 2),
        "torch_fidelity_images_per_s": round(2 * n / theirs, 2),
        "speedup": round(theirs / ours, 3),
    }

    # 2. the same generator scored twice under the same protocol
    ep = p.eval.model_copy(update={"num_real": n, "num_fake": n})
    ref = compute_ref_stats(ext, ep.num_real, ep.batch_size, work / "prepared", work / "ref.npz")
    torch.manual_seed(0)
    G = build_generator({"arch": "dcgan", "z_dim": 100, "g_channels": 32, "channels": 1, "resolution": 32})
    G.apply(init_weights)
    G.eval()
    t0 = time.perf_counter()
    first = score_generator(G, ext, ref, ep)
    t1 = time.perf_counter()
    second = score_generator(G, ext, ref, ep)
    t2 = time.perf_counter()
    assert second["generated_features_cached"] and second["fid"] == first["fid"]
    out["re_evaluation"] = {
        "first_s": round(t1 - t0, 2),
        "second_s": round(t2 - t1, 2),
        "ratio": round((t2 - t1) / (t1 - t0), 4),
        "metrics": list(ep.metrics),
        "bootstrap": ep.bootstrap,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
