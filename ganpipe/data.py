"""The `prepare` stage: turn a source dataset into uint8 NCHW arrays, a fixed split and a manifest.

Output directory layout (a DVC output, replaced atomically):
    {split}_images.npy   uint8 [N, C, H, W]
    {split}_labels.npy   int64 [N]
    manifest.json        source, licence, counts, per-class counts, resolution, channels, sha256
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ganpipe.errors import DataError
from ganpipe.io import atomic_dir, read_json, write_json
from ganpipe.params import DataParams

SPLITS = ("train", "test")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Source:
    images: np.ndarray  # uint8 [N, H, W] or [N, H, W, C], full 0..255 range
    labels: np.ndarray  # int64 [N]
    class_names: list[str]
    name: str
    licence: str


def load_digits_source() -> Source:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, values 0..16, 10 classes."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return Source(
        images=images,
        labels=bunch.target.astype(np.int64),
        class_names=[str(c) for c in bunch.target_names],
        name="digits",
        licence="UCI ML hand-written digits (Alpaydin & Kaynak 1998), CC BY 4.0, bundled with scikit-learn",
    )


SOURCES = {"digits": load_digits_source}


def resize_images(images: np.ndarray, resolution: int, channels: int) -> np.ndarray:
    """uint8 [N, H, W(, C)] -> uint8 [N, C, R, R]; antialiased (Lanczos) resampling, square inputs."""
    out = np.empty((len(images), channels, resolution, resolution), dtype=np.uint8)
    mode = "L" if channels == 1 else "RGB"
    for i, img in enumerate(images):
        pil = Image.fromarray(img).convert(mode)
        if pil.size != (resolution, resolution):
            pil = pil.resize((resolution, resolution), Image.Resampling.LANCZOS)
        arr = np.asarray(pil)
        out[i] = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return out


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: the same labels, fraction and seed give the same indices."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over names, shapes, dtypes and bytes of the arrays, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def prepare(p: DataParams, out_dir: str | Path) -> dict:
    """Prepare the dataset named by `p.source` into `out_dir`; return the manifest."""
    src = SOURCES[p.source]()
    images = resize_images(src.images, p.resolution, p.channels)
    train_idx, test_idx = split_indices(src.labels, p.test_fraction, p.split_seed)
    arrays = {}
    for split, idx in zip(SPLITS, (train_idx, test_idx)):
        arrays[f"{split}_images"] = images[idx]
        arrays[f"{split}_labels"] = src.labels[idx]

    counts = {
        split: {
            "images": int(len(arrays[f"{split}_labels"])),
            "per_class": {
                src.class_names[k]: int(n)
                for k, n in zip(*np.unique(arrays[f"{split}_labels"], return_counts=True))
            },
        }
        for split in SPLITS
    }
    manifest = {
        "source": src.name,
        "licence": src.licence,
        "resolution": p.resolution,
        "channels": p.channels,
        "num_classes": len(src.class_names),
        "class_names": src.class_names,
        "counts": counts,
        "split": {"test_fraction": p.test_fraction, "seed": p.split_seed, "stratified": True},
        "sha256": content_sha256(arrays),
    }
    with atomic_dir(out_dir) as tmp:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        write_json(tmp / MANIFEST, manifest)
    return manifest


def read_manifest(prepared_dir: str | Path) -> dict:
    return read_json(Path(prepared_dir) / MANIFEST, "`ganpipe prepare`")


def load_split(prepared_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map the uint8 images and labels of one split."""
    d = Path(prepared_dir)
    try:
        images = np.load(d / f"{split}_images.npy", mmap_mode="r", allow_pickle=False)
        labels = np.load(d / f"{split}_labels.npy", allow_pickle=False)
    except FileNotFoundError as exc:
        raise DataError(f"{exc.filename}: not found; run `ganpipe prepare` first") from None
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise DataError(f"{d}: {split} split is malformed (images {images.dtype} {images.shape}, "
                        f"labels {labels.shape}); re-run `ganpipe prepare`")
    return images, labels
