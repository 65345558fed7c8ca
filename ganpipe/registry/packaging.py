"""Packaging a generator for the registry: weights (safetensors) and config as artifacts, plus the
pyfunc that other MLflow clients (`mlflow models serve`) use. No pickle is stored.

ganpipe itself never runs the shipped code: it builds the network from the weights and config with
the installed code (`ganpipe.registry.refs`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

import ganpipe
from ganpipe.core.hashing import file_sha256
from ganpipe.registry.refs import ARTIFACT_NAME, CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_SHA256_TAG

PACKAGE_DIR = Path(ganpipe.__file__).parent
ENTRY = PACKAGE_DIR / "serving" / "pyfunc_entry.py"
# What the pyfunc imports, shipped with every version so that it loads wherever MLflow does.
SHIPPED_MODULES = (
    "__init__.py",
    "core/__init__.py",
    "core/errors.py",
    "core/io.py",
    "core/processes.py",
    "core/images.py",
    "nets/__init__.py",
    "nets/layers.py",
    "nets/dcgan.py",
    "nets/resnet.py",
    "nets/models.py",
    "serving/__init__.py",
    "serving/pyfunc.py",
)


def _signature(config: dict) -> ModelSignature:
    """Output columns only: an input schema would make MLflow drop unknown fields silently before the
    model sees them, and the model must refuse them (ganpipe.serving validates every record itself)."""
    cls = [ColSpec("long", "class")] if config.get("num_classes") else []
    return ModelSignature(
        inputs=None,
        outputs=Schema([ColSpec("long", "seed"), ColSpec("double", "psi"), *cls, ColSpec("string", "image")]),
    )


def _input_doc(config: dict) -> dict:
    """What the served model accepts, in the MLmodel file (the signature leaves inputs to the model)."""
    k = config.get("num_classes", 0)
    return {
        "seed": "integer, required: latent seed (0 <= seed < 2**63)",
        "psi": "number, optional: truncation 0 < psi <= 2 (default 1)",
        "class": (
            f"integer, optional: 0..{k - 1} (default seed mod {k})"
            if k
            else "not accepted: the generator is unconditional"
        ),
        "output": "one row per record: seed, psi, class, image (base64 PNG with provenance text chunks)",
    }


def save_local(weights: Path, config: dict, path: Path) -> Path:
    """A pyfunc model directory at `path` from verified weights and config, whose python_model is the
    installed ganpipe's entry file and which ships no code: what `ganpipe serve` serves, so that code
    stored with a version never runs (`mlflow models serve` of the registry's copy would run it)."""
    config_path = path.parent / f"{path.name}-{CONFIG_FILE}"
    config_path.write_text(json.dumps(config, indent=2))
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=str(ENTRY),
        artifacts={"weights": str(weights), "config": str(config_path)},
        signature=_signature(config),
        metadata={"ganpipe_input": _input_doc(config)},
    )
    return path


def log_generator(G_ema_state: dict, config: dict, model_name: str, data_sha256: str = "") -> tuple[str, str, str]:
    """Log the generator to the active run and register it; returns (version, model_uri, weights sha256).
    The sha256 of the weights file goes into the model's metadata; `register` also tags the version with it."""
    from safetensors.torch import save_file

    config = {**config, "provenance": {"run_id": mlflow.active_run().info.run_id, "data_sha256": data_sha256}}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        weights, config_path = d / WEIGHTS_FILE, d / CONFIG_FILE
        save_file({k: v.contiguous() for k, v in G_ema_state.items()}, weights)
        config_path.write_text(json.dumps(config, indent=2))
        sha = file_sha256(weights)
        code = d / "code" / "ganpipe"
        code.mkdir(parents=True)
        for name in SHIPPED_MODULES:
            (code / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(PACKAGE_DIR / name, code / name)
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT_NAME,
            python_model=str(ENTRY),
            artifacts={"weights": str(weights), "config": str(config_path)},
            code_paths=[str(code)],
            signature=_signature(config),
            metadata={"ganpipe_input": _input_doc(config), WEIGHTS_SHA256_TAG: sha},
            input_example=pd.DataFrame({"seed": [0, 1], "psi": [1.0, 0.7]}),
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"mlflow=={mlflow.__version__}",
                "safetensors",
                "numpy",
                "pandas",
                "pillow",  # the PNGs it returns
            ],
            registered_model_name=model_name,
        )
    return str(info.registered_model_version), f"models:/{model_name}/{info.registered_model_version}", sha
