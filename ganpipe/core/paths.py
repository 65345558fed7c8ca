"""The project's fixed file layout, relative to the project directory (the DVC repo root).

dvc.yaml names the same paths; tests/test_dvc.py checks that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def params_path(self) -> Path:
        return self.root / "params.yaml"

    @property
    def prepared_dir(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def ref_stats_path(self) -> Path:
        return self.root / "data" / "ref_stats.npz"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def checkpoint_path(self) -> Path:
        return self.models_dir / "checkpoint.pt"

    @property
    def run_info_path(self) -> Path:
        return self.models_dir / "run.json"

    @property
    def metrics_path(self) -> Path:
        return self.root / "reports" / "metrics.json"

    @property
    def registration_path(self) -> Path:
        return self.root / "reports" / "registration.json"


def layout(root: str | Path = ".") -> Layout:
    return Layout(Path(root).resolve())
