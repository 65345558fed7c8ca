"""The registered generator as an MLflow pyfunc: safetensors weights + config, code shipped with it.

Input: a DataFrame with an integer `seed` column, one row per image (image i uses latent seed i).
Output: uint8 images [N, H, W, C]. Loading reads safetensors and JSON only: nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from ganpipe.models import build_generator, sample

MAX_IMAGES = 4096


class GeneratorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from safetensors.torch import load_file

        self.config = json.loads(Path(context.artifacts["config"]).read_text())
        G = build_generator(self.config)
        G.load_state_dict(load_file(context.artifacts["weights"]))
        self.G = G.eval().requires_grad_(False)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        seeds = [int(s) for s in np.asarray(model_input["seed"]).ravel()]
        if len(seeds) > MAX_IMAGES:
            raise ValueError(f"at most {MAX_IMAGES} images per call, got {len(seeds)}")
        return sample(self.G, seeds).permute(0, 2, 3, 1).numpy()
