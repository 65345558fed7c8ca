"""R3GAN's loss against today's default, side by side in one run, on the shipped params.yaml defaults.

Today: `train.loss: nonsaturating`, no penalty. R3GAN (Huang et al., NeurIPS 2024): `train.loss:
relativistic` with zero-centred R1 and R2, `r1_gamma = r2_gamma = gamma`. Everything else is params.yaml
as shipped (digits, 32 px, dcgan, 100 kimg, DiffAugment auto, Inception evaluation).

    .venv/bin/python bench/loss_compare.py [--kimg 100] [--gamma G] [--search-kimg 30]
                                           [--search-gammas 0.05 0.5 2] [--out bench/results/loss_compare.json]

Without `--gamma`, gamma is chosen first by short R3GAN runs (`--search-kimg` each) on a cheap score: the
best snapshot's quick KID that training computes anyway (`train.snapshot_kid_images` fakes). Then both
losses train for `--kimg` and are scored by the `evaluate` stage's function (FID with its bootstrap
interval, KID, precision/recall, density/coverage), plus the promotion gate's paired bootstrap of
R3GAN minus today on FID and KID (same latent seeds for both). Each training runs in its own temp
project like tests/conftest.py's `build_trained` (prepare, reference statistics, train with its MLflow
store under the project). Cached Inception weights, reference statistics and generated features come
from the usual ganpipe cache ($GANPIPE_CACHE_DIR or ~/.cache/ganpipe): they do not change the scores.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import signal
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ganpipe.core.params import parse_params  # noqa: E402
from ganpipe.core.paths import layout  # noqa: E402
from ganpipe.core.tracking import git_commit  # noqa: E402
from ganpipe.data.prepare import prepare  # noqa: E402
from ganpipe.evaluation.evaluate import evaluate, generated_features  # noqa: E402
from ganpipe.evaluation.features import build_extractor  # noqa: E402
from ganpipe.evaluation.metrics import paired_difference  # noqa: E402
from ganpipe.evaluation.refstats import compute_ref_stats, load_ref_stats  # noqa: E402
from ganpipe.nets.checkpoint import generator_from_checkpoint  # noqa: E402
from ganpipe.training.loop import train  # noqa: E402

SCORES = [
    "fid",
    "fid_ci_low",
    "fid_ci_high",
    "kid",
    "kid_std",
    "kid_ci_low",
    "kid_ci_high",
    "precision",
    "recall",
    "density",
    "coverage",
    "memorization",
]


def shipped_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def variant(loss: str, gamma: float, kimg: float) -> dict:
    raw = copy.deepcopy(shipped_params())
    raw["train"].update(loss=loss, r1_gamma=gamma, r2_gamma=gamma, total_kimg=kimg)
    return raw


def build_and_train(root: Path, raw: dict):
    """A project at `root` with `raw` as its params.yaml: prepare, reference statistics, train.
    Returns (params, layout, run.json's content); the training's failure is returned as its message."""
    p = parse_params(raw)
    lay = layout(root)
    lay.root.mkdir(parents=True, exist_ok=True)
    lay.params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    prepare(p.data, lay.prepared_dir)
    compute_ref_stats(build_extractor(p.eval), p.eval.num_real, p.eval.batch_size, lay.prepared_dir, lay.ref_stats_path)
    try:
        info = train(p, lay.prepared_dir, lay.models_dir, lay.root)
    except Exception as exc:  # a diverged or collapsed run is a result here, not a crash of the benchmark
        return p, lay, {"error": f"{type(exc).__name__}: {exc}"}
    return p, lay, info


def search_gamma(work: Path, gammas: list[float], kimg: float, save) -> tuple[float, list[dict]]:
    rows: list[dict] = []
    for gamma in gammas:
        t0 = time.perf_counter()
        _, _, info = build_and_train(work / f"search-gamma-{gamma:g}", variant("relativistic", gamma, kimg))
        row = {
            "gamma": gamma,
            "kimg": kimg,
            "best_quick_kid": info.get("best_quick_kid"),
            "best_kimg": info.get("best_kimg"),
            "train_seconds": info.get("seconds"),
            "wall_seconds": round(time.perf_counter() - t0, 1),
            **({"error": info["error"]} if "error" in info else {}),
        }
        rows.append(row)
        print(f"search: {json.dumps(row)}", flush=True)
        save(search_rows=rows)
    ok = [r for r in rows if r["best_quick_kid"] is not None]
    if not ok:
        raise SystemExit("every gamma failed in the search; see the rows above")
    return min(ok, key=lambda r: r["best_quick_kid"])["gamma"], rows


def full_run(root: Path, name: str, raw: dict) -> dict:
    t0 = time.perf_counter()
    p, lay, info = build_and_train(root, raw)
    out = {"name": name, "loss": raw["train"]["loss"], "r1_gamma": raw["train"]["r1_gamma"]}
    out["r2_gamma"] = raw["train"]["r2_gamma"]
    if "error" in info:
        print(f"{name}: training failed: {info['error']}", flush=True)
        return {**out, "error": info["error"]}
    t1 = time.perf_counter()
    result = evaluate(p.eval, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)
    out.update(
        train_seconds=info["seconds"],
        train_images_per_second=info["images_per_second"],
        best_kimg=info["best_kimg"],
        best_quick_kid=info["best_quick_kid"],
        eval_seconds=round(time.perf_counter() - t1, 1),
        wall_seconds=round(time.perf_counter() - t0, 1),
        fingerprint=result["fingerprint"],
        **{k: result[k] for k in SCORES if k in result},
    )
    out["_paths"] = (str(lay.checkpoint_path), str(lay.ref_stats_path))
    print(f"{name}: {json.dumps({k: v for k, v in out.items() if k != '_paths'})}", flush=True)
    return out


def paired(base: dict, r3: dict, p) -> dict:
    """R3GAN minus today on FID and KID, paired over the same latent seeds (the promotion gate's test)."""
    ref = load_ref_stats(base["_paths"][1])
    extractor = build_extractor(p.eval)
    feats = [
        generated_features(generator_from_checkpoint(r["_paths"][0], torch.device("cpu"))[0], extractor, p.eval)[0]
        for r in (base, r3)
    ]
    g = p.registry.gate
    out = {"bootstrap": g.bootstrap, "confidence": g.confidence}
    for key in ("fid", "kid"):
        point, low, high = paired_difference(key, ref.stats, feats[0], feats[1], g.bootstrap, g.confidence, p.eval.seed)
        out[key] = {"r3gan_minus_today": point, "ci_low": low, "ci_high": high}
    return out


def machine(load_start: tuple[float, ...]) -> dict:
    return {
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        # other jobs on the machine slow training and evaluation (the seconds), never the scores
        "load_average_1_5_15_at_start": [round(x, 2) for x in load_start],
        "load_average_1_5_15_now": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kimg", type=float, default=None, help="training length of the comparison (default: params.yaml)")
    ap.add_argument("--gamma", type=float, default=None, help="R1 = R2 weight for R3GAN (default: searched)")
    ap.add_argument("--search-kimg", type=float, default=30.0)
    ap.add_argument("--search-gammas", type=float, nargs="+", default=[0.05, 0.5, 2.0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "loss_compare.json"))
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # each project's own store
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still removes its temp projects
    kimg = args.kimg if args.kimg is not None else shipped_params()["train"]["total_kimg"]
    load_start, t_start = os.getloadavg(), time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "loss_compare",
        "date": date.today().isoformat(),
        "command": " ".join([".venv/bin/python", "bench/loss_compare.py", *sys.argv[1:]]),
        "git_commit": git_commit(REPO),
        "complete": False,
        "params": "params.yaml as shipped (digits, 32 px, dcgan, DiffAugment auto, Inception eval) except "
        "train.loss, train.r1_gamma, train.r2_gamma and train.total_kimg",
        "kimg": kimg,
        "gamma": args.gamma,
        "gamma_search": None,
        "runs": [],
        "paired_r3gan_minus_today": None,
    }

    def save(search_rows: list[dict] | None = None, **fields) -> None:
        """Write what is measured so far: a run stopped half-way keeps its finished trainings."""
        if search_rows is not None:
            score = "best snapshot's quick KID (lower is better)"
            result["gamma_search"] = {"score": score, "kimg": args.search_kimg, "rows": search_rows}
        result.update(fields, machine=machine(load_start), total_wall_seconds=round(time.perf_counter() - t_start, 1))
        runs = [{k: v for k, v in r.items() if k != "_paths"} for r in result["runs"]]
        out.write_text(json.dumps({**result, "runs": runs}, indent=2) + "\n")

    with tempfile.TemporaryDirectory(prefix="loss-compare-") as d:
        work = Path(d)
        gamma = args.gamma
        if gamma is None:
            gamma, _ = search_gamma(work, args.search_gammas, args.search_kimg, save)
            print(f"search: gamma = {gamma:g}", flush=True)
        save(gamma=gamma)
        base = full_run(work / "today", "today", variant("nonsaturating", 0.0, kimg))
        save(runs=[base])
        r3 = full_run(work / "r3gan", "r3gan", variant("relativistic", gamma, kimg))
        save(runs=[base, r3])
        if "error" not in base and "error" not in r3:
            diff = paired(base, r3, parse_params(variant("nonsaturating", 0.0, kimg)))
            print(f"paired: {json.dumps(diff)}", flush=True)
            save(paired_r3gan_minus_today=diff)
    save(complete=True)
    print(out.read_text())


if __name__ == "__main__":
    main()
