"""Versions registered by older ganpipe code still load and generate the same pixels.

The fixture store (tests/fixtures/registry_v0_1, made by its make_store.py with the code of commit
91248ac, before ganpipe was split into sub-packages) holds v1, an unconditional DCGAN, and v2, a
class-conditional ResNet, with the pixels that code generated for seeds 0..3. Their shipped
`pyfunc_entry.py` imports `ganpipe.serving`, and their weights use the old layer names.
"""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import REPO, copy_project

FIXTURE = Path(__file__).parent / "fixtures" / "registry_v0_1"
MADE_AT = "/tmp/ganpipe-fixture-v0"  # the store's absolute paths, as make_store.py wrote them
SEEDS = list(range(4))


@pytest.fixture(scope="module")
def old_store(tmp_path_factory):
    dst = tmp_path_factory.mktemp("compat") / "project"
    copy_project(FIXTURE, dst, stored_as=Path(MADE_AT), ignore=shutil.ignore_patterns("make_store.py", "__pycache__"))
    shutil.copy(REPO / "params.yaml", dst / "params.yaml")  # registry.model_name
    return dst


def _png_pixels(data: bytes) -> np.ndarray:
    a = np.asarray(Image.open(io.BytesIO(data)))
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_version_registered_before_the_split_generates_the_same_pixels(old_store, version, tmp_path):
    from ganpipe.cli import main

    expected = np.load(old_store / "expected.npz")[f"v{version}"]
    out = tmp_path / "out"
    code = main(
        [
            "-C",
            str(old_store),
            "generate",
            "--model",
            f"models:/ganpipe-generator/{version}",
            "-n",
            str(len(SEEDS)),
            "--seed",
            "0",
            "--out",
            f"{out}/",
        ]
    )
    assert code == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == len(SEEDS)
    got = np.stack([_png_pixels(f.read_bytes()) for f in files])
    assert got.shape == expected.shape and np.array_equal(got, expected)


@pytest.mark.parametrize("version", ["1", "2"])
def test_its_shipped_pyfunc_still_serves_it(old_store, version):
    import mlflow

    from ganpipe.core import tracking

    tracking.configure(old_store)
    model = mlflow.pyfunc.load_model(f"models:/ganpipe-generator/{version}")
    rows = model.predict(pd.DataFrame({"seed": SEEDS}))
    got = np.stack([_png_pixels(base64.b64decode(img)) for img in rows["image"]])
    assert np.array_equal(got, np.load(old_store / "expected.npz")[f"v{version}"])
