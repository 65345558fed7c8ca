"""Content generation from a registered model (`models:/...`) or a checkpoint file.

Image i uses latent seed `seed + i`, so the same seed always gives the same image, whatever N.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ganpipe import tracking
from ganpipe.images import grid, save_png
from ganpipe.models import sample


def generate_images(model: str, n: int, seed: int, root: str | Path = ".") -> np.ndarray:
    """uint8 [N, C, H, W] images for seeds seed..seed+n-1."""
    from ganpipe.registry import load_generator

    tracking.configure(root)
    G = load_generator(model)
    return sample(G, list(range(seed, seed + n))).numpy()


def generate(model: str, n: int, seed: int, out: str | Path, root: str | Path = ".") -> Path:
    """Write a grid of `n` images to the PNG `out`."""
    return save_png(grid(generate_images(model, n, seed, root)), out)
