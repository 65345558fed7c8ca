"""GPU training throughput: DCGAN-64 and ResNet-32 in fp32, bf16 and bf16 + torch.compile.

For each configuration: images/s of `ganpipe.training.engine.Engine.step` + EMA update (the training loop's work
per step) on synthetic data held on the GPU, after warm-up, timed with CUDA events; FLOPs per step
counted once with torch's FlopCounterMode; and the fraction of the GPU's dense bf16 peak they reach.
Run by bench/gpu.sh when a GPU is lent; on a CPU it runs a tiny smoke version (--smoke).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ganpipe.core.params import parse_params  # noqa: E402
from ganpipe.nets.models import generator_config  # noqa: E402
from ganpipe.training.engine import Engine  # noqa: E402

CONFIGS = {  # name: (arch, resolution, width, batch, loss)
    "dcgan-64": ("dcgan", 64, 64, 256, "nonsaturating"),
    "resnet-32": ("resnet", 32, 128, 128, "hinge"),
}


def shipped_params() -> dict:
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text())


def engine_for(name: str, precision: str, compile_: bool, device: torch.device, smoke: bool) -> tuple[Engine, int]:
    arch, res, width, batch, loss = CONFIGS[name]
    if smoke:
        width, batch = 8, 8
    raw = shipped_params()
    raw["model"].update(arch=arch, g_channels=width, d_channels=width, z_dim=128)
    raw["train"].update(loss=loss, batch_size=batch, precision=precision, compile=compile_, augment=False)
    p = parse_params(raw)
    config = generator_config(p.model.model_dump(), 3, res)
    torch.manual_seed(0)
    return Engine(config, arch, width, p.train, device, augment=False), batch


def measure(e: Engine, batch: int, res: int, device: torch.device, warmup: int, steps: int) -> dict:
    real = (torch.rand(batch, 3, res, res, device=device) * 2 - 1).contiguous(
        memory_format=torch.channels_last if e.channels_last else torch.contiguous_format
    )
    batches = [(real, None)]
    for _ in range(warmup):
        e.step(batches)
        e.update_ema(10**6, batch)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        e.step(batches)
    flops = fc.get_total_flops()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        e.step(batches)
        e.update_ema(10**6, batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    assert not e.bad.item(), "non-finite loss during the benchmark"
    return {
        "images_per_second": round(batch * steps / seconds, 1),
        "flops_per_step": flops,
        "tflops_per_second": round(flops * steps / seconds / 1e12, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="which of: " + ", ".join(CONFIGS))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on any device: checks the script runs")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    rows = []
    for name in args.configs.split(","):
        for precision, compile_ in (("fp32", False), ("bf16", False), ("bf16", True)):
            if compile_ and device.type != "cuda":
                continue
            e, batch = engine_for(name, precision, compile_, device, args.smoke)
            try:
                r = measure(
                    e,
                    batch,
                    CONFIGS[name][1],
                    device,
                    2 if args.smoke else args.warmup,
                    3 if args.smoke else args.steps,
                )
            except Exception as exc:  # noqa: BLE001  a configuration that fails is a finding, not the end of the run
                r = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            r.update(
                config=name,
                precision=precision,
                compile=compile_,
                batch=batch,
                peak_fraction=round(r["tflops_per_second"] / args.peak_tflops, 4) if "error" not in r else None,
            )
            print(json.dumps(r), flush=True)
            rows.append(r)
            del e
            if device.type == "cuda":
                torch.cuda.empty_cache()
    result = {
        "benchmark": "gpu_speed",
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "peak_tflops_bf16": args.peak_tflops,
        "smoke": args.smoke,
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "smoke" if args.smoke else device.type
    (out / f"gpu_speed-{tag}-{date.today().isoformat()}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
