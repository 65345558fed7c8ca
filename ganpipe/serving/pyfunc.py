"""The registered generator as an MLflow pyfunc: safetensors weights + config, code shipped with it.

Input (MLflow's scoring protocol, e.g. `{"dataframe_records": [{"seed": 1, "psi": 0.7, "class": 3}]}`):
one record per image; `seed` required (an integer, 0 <= seed < 2**63), `psi` optional (truncation,
0 < psi <= 2, default 1), `class` optional (conditional models only; default seed mod num_classes).
Output: one row per record with the seed, psi and class used and `image`, a base64 PNG whose text
chunks carry its provenance. Bad input raises an MLflow INVALID_PARAMETER_VALUE error (HTTP 400 from
`mlflow models serve`), never an internal error. Loading reads safetensors and JSON only: nothing is
unpickled.
"""

from __future__ import annotations

import base64
import json
import math
import os
from numbers import Real
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from ganpipe.core.images import png_bytes, provenance, to_pil
from ganpipe.nets.models import build_generator, latents, to_uint8

FIELDS = ("seed", "psi", "class")
MAX_IMAGES = 64  # per request, unless GANPIPE_SERVE_MAX_IMAGES says otherwise (`ganpipe serve` sets it)
MAX_IMAGES_ENV = "GANPIPE_SERVE_MAX_IMAGES"
SERVED_AS_ENV = "GANPIPE_SERVED_AS"  # JSON {model, version, alias}: what `ganpipe serve` resolved
SEED_LIMIT = 2**63
BATCH_SIZE = 16  # images through G at once (`ganpipe serve` uses serve.batch_size)


class BadRequest(ValueError):
    """A request this model refuses; the message says which record and why."""


def _null(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _integer(v, what: str, row: int, low: int, high: int) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, Real) or not float(v).is_integer():
        raise BadRequest(f"record {row}: {what} must be an integer, got {v!r}")
    v = int(v)
    if not low <= v < high:
        raise BadRequest(f"record {row}: {what} {v} is outside {low}..{high - 1}")
    return v


def parse_records(frame, num_classes: int, max_images: int) -> list[tuple[int, float, int | None]]:
    """(seed, psi, class) per record, validated; BadRequest names the first problem."""
    if isinstance(frame, dict):
        frame = pd.DataFrame(frame)
    if not isinstance(frame, pd.DataFrame):
        raise BadRequest(
            f"expected records with fields {', '.join(FIELDS)} (dataframe_records or "
            f"dataframe_split), got {type(frame).__name__}"
        )
    unknown = [str(c) for c in frame.columns if c not in FIELDS]
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r} (allowed: {', '.join(FIELDS)})")
    if "seed" not in frame.columns:
        raise BadRequest("every record needs a 'seed'")
    if len(frame) == 0:
        raise BadRequest("no records")
    if len(frame) > max_images:
        raise BadRequest(f"{len(frame)} records: at most {max_images} images per request")
    out = []
    for row, rec in enumerate(frame.astype(object).to_dict("records")):
        if _null(rec["seed"]):
            raise BadRequest(f"record {row}: missing 'seed'")
        seed = _integer(rec["seed"], "seed", row, 0, SEED_LIMIT)
        psi = rec.get("psi")
        if _null(psi):
            psi = 1.0
        elif isinstance(psi, (bool, np.bool_)) or not isinstance(psi, Real) or not 0 < float(psi) <= 2:
            raise BadRequest(f"record {row}: psi must be a number in (0, 2], got {psi!r}")
        cls = rec.get("class")
        if _null(cls):
            cls = seed % num_classes if num_classes else None
        elif not num_classes:
            raise BadRequest(f"record {row}: this generator is unconditional; drop 'class'")
        else:
            cls = _integer(cls, "class", row, 0, num_classes)
        out.append((seed, float(psi), cls))
    return out


@torch.no_grad()
def generate_rows(G, records: list[tuple[int, float, int | None]], meta: dict, batch_size: int) -> list[dict]:
    """One prediction row per (seed, psi, class) record: the values used and `image`, a base64 PNG with
    provenance `meta`. Generated `batch_size` at a time: memory stays bounded whatever the request size."""
    rows = []
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        psi = torch.tensor([p for _, p, _ in chunk])[:, None]
        c = torch.tensor([k for _, _, k in chunk]) if G.num_classes else None
        images = to_uint8(G(latents([s for s, _, _ in chunk], G.z_dim) * psi, c)).numpy()
        for (seed, p, k), img in zip(chunk, images):
            png = png_bytes(to_pil(img), provenance(meta, seed, p, k))
            rows.append(
                {
                    "seed": seed,
                    "psi": p,
                    **({"class": k} if k is not None else {}),
                    "image": base64.b64encode(png).decode("ascii"),
                }
            )
    return rows


class GeneratorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from safetensors.torch import load_file

        self.config = json.loads(Path(context.artifacts["config"]).read_text())
        G = build_generator(self.config)
        G.load_state_dict(load_file(context.artifacts["weights"]))
        self.G = G.eval().requires_grad_(False)
        self.max_images = int(os.environ.get(MAX_IMAGES_ENV, MAX_IMAGES))
        served = json.loads(os.environ.get(SERVED_AS_ENV) or "{}")
        origin = self.config.get("provenance", {})
        run_uri = f"runs:/{origin['run_id']}/generator" if origin.get("run_id") else ""
        pinned = f"models:/{served['model']}/{served['version']}" if served.get("version") else run_uri
        # The keys `ganpipe generate` writes: `ganpipe generate --replay` works on served images too.
        self.meta = {
            "model": served.get("model", ""),
            "model_uri": pinned,
            "version": served.get("version", ""),
            "alias": served.get("alias", ""),
            "run_id": origin.get("run_id", ""),
            "data_sha256": origin.get("data_sha256", ""),
        }

    @torch.no_grad()
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        # The DataFrame hint is one MLflow infers no schema from: the records reach parse_records as sent.
        try:
            records = parse_records(model_input, self.G.num_classes, self.max_images)
        except BadRequest as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        return pd.DataFrame(generate_rows(self.G, records, self.meta, BATCH_SIZE))
