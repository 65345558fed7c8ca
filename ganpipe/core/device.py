"""Device choice: CUDA when present, else CPU; never a hard-coded "cuda" default."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ganpipe.core.errors import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; an explicit CUDA device must exist."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"base.device = {name!r}: CUDA is not available on this machine (use auto or cpu)")
    return torch.device(name)
