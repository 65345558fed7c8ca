"""Checkpoints: one self-describing dict of state_dicts, written to a temp file and renamed.

Never pickled modules: loading uses `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ganpipe.core.errors import DataError
from ganpipe.core.io import atomic_path
from ganpipe.nets.models import build_generator

FORMAT_VERSION = 1
# The keys a generator is built from. The rest of a training checkpoint's layout is
# `ganpipe.training.state`'s; these two sit here because loading a generator must not need training code.
G_EMA = "G_ema"  # the EMA generator's state_dict: evaluation, registration and generation use it
GENERATOR_CONFIG = "generator_config"  # what `build_generator` builds it from


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **state}, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: no such checkpoint; run `ganpipe train` first") from None
    except Exception as exc:  # corrupt or foreign file: one clear line, not a traceback
        raise DataError(f"{path}: not a readable ganpipe checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: not a ganpipe checkpoint of format version {FORMAT_VERSION}")
    return ckpt


def generator_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """The EMA generator of a checkpoint, in eval mode, and its config."""
    ckpt = load_checkpoint(path)
    config = ckpt[GENERATOR_CONFIG]
    G = build_generator(config)
    G.load_state_dict(ckpt[G_EMA])
    return G.to(device).eval().requires_grad_(False), config


def rng_states() -> dict[str, Any]:
    """Every RNG a training step draws from: torch (CPU and each CUDA device), numpy and Python."""
    import random

    import numpy as np

    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "key": np_state[1].tolist(),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": _python_state(random.getstate()),
    }


def set_rng_states(s: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(("MT19937", np.array(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = s["python"]
    random.setstate((version, tuple(internal), gauss))


def _python_state(state: tuple) -> list:
    # lists and ints only: weights_only loading accepts them, no pickled objects
    version, internal, gauss = state
    return [version, list(internal), gauss]
