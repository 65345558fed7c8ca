"""Content generation from a registered model (`models:/...`) or a checkpoint file.

Image i uses latent seed `seed + i`, so the same seed always gives the same image, whatever N.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ganpipe.errors import RegistryError
from ganpipe.images import grid, save_png


def generate_images(model: str, n: int, seed: int, root: str | Path = ".") -> np.ndarray:
    """uint8 [N, C, H, W] images for seeds seed..seed+n-1."""
    seeds = list(range(seed, seed + n))
    if model.startswith(("models:/", "runs:/")):
        import mlflow
        from mlflow.exceptions import MlflowException

        from ganpipe import tracking

        tracking.configure(root)
        try:
            pyfunc = mlflow.pyfunc.load_model(model)
        except MlflowException as exc:
            raise RegistryError(f"{model}: {exc.message.splitlines()[0]}") from None
        out = pyfunc.predict(pd.DataFrame({"seed": seeds}))
        return np.asarray(out).transpose(0, 3, 1, 2)
    from ganpipe.checkpoint import load_generator
    from ganpipe.models import sample

    G, _ = load_generator(model)
    return sample(G, seeds).numpy()


def generate(model: str, n: int, seed: int, out: str | Path, root: str | Path = ".") -> Path:
    """Write a grid of `n` images to the PNG `out`."""
    return save_png(grid(generate_images(model, n, seed, root)), out)
