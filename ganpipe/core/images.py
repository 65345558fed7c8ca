"""Image grids and PNG writing shared by training snapshots, generation and serving.

Ships inside the registered MLflow model (with ganpipe.io): numpy, Pillow and the standard library only.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from ganpipe.core.io import atomic_path


def grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> Image.Image:
    """uint8 [N, C, H, W] (C = 1 or 3) -> one PIL image, row-major, `pad` pixels of black between."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"grid needs uint8 [N, 1|3, H, W], got {images.dtype} {images.shape}")
    n, c, h, w = images.shape
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    canvas = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        canvas[y : y + h, x : x + w] = images[i].transpose(1, 2, 0)
    return Image.fromarray(canvas[:, :, 0] if c == 1 else canvas, "L" if c == 1 else "RGB")


PROVENANCE = "ganpipe:"  # prefix of the PNG text chunks that say where an image came from


def provenance(meta: dict, seed: int, psi: float, class_: int | None, n: int = 1) -> dict[str, str]:
    """PNG text chunks for an image (or a grid of n) made from model `meta` (model, model_uri, version,
    alias, run_id, data_sha256) with latent seed, truncation psi and class: enough to regenerate it."""
    return {
        f"{PROVENANCE}{k}": str(v)
        for k, v in {**meta, "seed": seed, "n": n, "psi": psi, "class": "" if class_ is None else class_}.items()
    }


def png_bytes(img: Image.Image, text: dict[str, str] | None = None) -> bytes:
    """A PNG file's bytes, with `text` as tEXt chunks (provenance)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, str(value))
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(img: Image.Image, path: str | Path, text: dict[str, str] | None = None) -> Path:
    """Write a PNG atomically, with `text` as tEXt chunks (provenance)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(img, text))
    return Path(path)


def png_text(path: str | Path) -> dict[str, str]:
    """The tEXt chunks of a PNG."""
    with Image.open(path) as img:
        return dict(getattr(img, "text", {}) or {})


def to_pil(image: np.ndarray) -> Image.Image:
    """uint8 [C, H, W] -> PIL image."""
    return grid(image[None], cols=1, pad=0)
