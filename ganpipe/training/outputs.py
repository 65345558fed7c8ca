"""What the `train` stage leaves in `models/`: the best and last checkpoints, the best grid, the snapshot
log (as JSON lines and as a table for `dvc plots`) and `run.json`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import torch

from ganpipe.core.io import write_json
from ganpipe.training.snapshots import Snapshots
from ganpipe.training.state import TrainState

CURVES = "curves.csv"  # the snapshot log as a table: dvc.yaml's `plots` draw it (`dvc plots show`)
CURVE_COLUMNS = ("kimg", "loss_G", "loss_D", "quick_kid", "diversity", "duplicate_rate")


def log_text(log: list[dict]) -> str:
    """The snapshot log as JSON lines (`log.jsonl`)."""
    return "".join(json.dumps(x) + "\n" for x in log)


def write_curves(log: list[dict], path: Path) -> None:
    """The snapshot log's CURVE_COLUMNS as CSV (empty where a line has no value)."""
    with open(path, "w") as f:
        f.write(",".join(CURVE_COLUMNS) + "\n")
        for line in log:
            f.write(",".join("" if line.get(c) is None else f"{line[c]:.6g}" for c in CURVE_COLUMNS) + "\n")


def write_outputs(
    snaps: Snapshots,
    out: Path,
    state: TrainState,
    run: mlflow.ActiveRun,
    manifest: dict,
    config: dict,
    device: torch.device,
    seconds: float,
    start_nimg: int,
    lineage: dict,
) -> dict:
    """Assemble the stage outputs in `out`: checkpoint.pt (the best snapshot: evaluation and registration
    use it), last.pt (the final training state, as StudioGAN keeps "best" and "current"), samples.png
    (the best snapshot's grid), log.jsonl, curves.csv and run.json; return run.json's content."""
    shutil.copyfile(snaps.best_path, out / "checkpoint.pt")
    shutil.copyfile(snaps.latest(), out / "last.pt")
    shutil.copyfile(snaps.best_png, out / "samples.png")
    (out / "log.jsonl").write_text(log_text(state.log))
    write_curves(state.log, out / CURVES)
    mlflow.log_artifact(str(out / "log.jsonl"))
    info = {
        "mlflow_run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "kimg": state.nimg / 1000,
        "steps": state.step,
        "best_kimg": state.best["kimg"],
        "best_quick_kid": state.best["quick_kid"],
        "resumed_from_kimg": start_nimg / 1000 if start_nimg else None,
        "device": str(device),
        "seconds": round(seconds, 2),
        "images_per_second": round((state.nimg - start_nimg) / seconds, 1),
        "data_sha256": manifest["sha256"],
        "data_source": manifest["source"],
        "data_dvc_md5": lineage["data_dvc_md5"],
        "git_commit": lineage["git_commit"],
        "generator_config": config,
    }
    write_json(out / "run.json", info)
    return info
