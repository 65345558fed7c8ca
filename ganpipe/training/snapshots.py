"""The training work directory (`models.partial/` next to `models/`): resumable snapshots and the best one.

Snapshots are full training states (`snapshot-<nimg>.pt`), each written to a temp file and renamed; the
last `keep` are kept. `best.pt` / `best.png` are the snapshot with the best quick KID and its grid, which
the stage outputs at the end. The directory survives crashes, so `ganpipe train --resume` (and a
Prefect retry) continues from the newest snapshot, and so does the next plain `ganpipe train` (a
`dvc repro`, the next `ganpipe run`) when the snapshot's params, data and code are today's; a finished
run removes it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from ganpipe.core.io import atomic_path
from ganpipe.nets.checkpoint import load_checkpoint, save_checkpoint
from ganpipe.training.state import Key

_NAME = re.compile(r"^snapshot-(\d{12})\.pt$")
RESUME_ENV = "GANPIPE_TRAIN_RESUME"  # "1": `ganpipe train` resumes (how a Prefect retry asks it through dvc)
FRESH_ENV = "GANPIPE_TRAIN_FRESH"  # "1": `ganpipe train` starts over, never resumes (`ganpipe run --force`)


def work_dir_of(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".partial")


class Snapshots:
    def __init__(self, path: str | Path, keep: int):
        self.path, self.keep = Path(path), keep

    @property
    def best_path(self) -> Path:
        return self.path / "best.pt"

    @property
    def best_png(self) -> Path:
        return self.path / "best.png"

    @property
    def log_path(self) -> Path:
        return self.path / "log.jsonl"

    def all(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if _NAME.match(p.name))

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def save(self, state: dict[str, Any]) -> Path:
        """Write a training checkpoint (`ganpipe.training.state.checkpoint`) as snapshot-<nimg>.pt and
        drop all but the newest `keep`."""
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / f"snapshot-{int(state[Key.NIMG]):012d}.pt"
        save_checkpoint(path, state)
        for old in self.all()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def mark_best(self, snapshot: Path, grid_png: Path) -> None:
        for src, dst in ((grid_png, self.best_png), (snapshot, self.best_path)):
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)

    def best_nimg(self) -> int | None:
        """nimg of best.pt, or None when there is none."""
        if not self.best_path.exists():
            return None
        return int(load_checkpoint(self.best_path)[Key.NIMG])

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def abandoned_run_id(work_dir: str | Path) -> str | None:
    """The MLflow run id of the newest snapshot a training left behind (None when there is none)."""
    latest = Snapshots(work_dir, 1).latest()
    if latest is None:
        return None
    try:
        return load_checkpoint(latest).get(Key.MLFLOW_RUN_ID) or None
    except Exception:  # a snapshot cut short is not worth a second failure
        return None
