"""The `ref-stats` stage: features and statistics of the real reference set, computed once.

Stored as one `.npz` (no pickle) keyed by what determines it: the dataset's content hash, the
extractor and its weights' sha256, the resize method and N. Evaluations reuse it and refuse it when
their extractor differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ganpipe.data import load_split, read_manifest
from ganpipe.errors import DataError
from ganpipe.features import Extractor
from ganpipe.io import atomic_path
from ganpipe.metrics import FeatureSet

SPLIT = "train"
SUBSET_SEED = 0  # which real images form the reference when num_real < the split's size


@dataclass(frozen=True)
class RefStats:
    stats: FeatureSet
    key: dict  # data_sha256, split, num_real, extractor, weights_sha256, resize


def reference_indices(n_available: int, num_real: int) -> np.ndarray:
    """A fixed subset: the same data and N always give the same reference images."""
    n = min(num_real, n_available)
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(n_available)[:n])


def compute_ref_stats(extractor: Extractor, num_real: int, batch_size: int, prepared_dir: str | Path,
                      out_path: str | Path) -> RefStats:
    """Extract features of up to `num_real` real training images and store them with their key."""
    manifest = read_manifest(prepared_dir)
    images, _ = load_split(prepared_dir, SPLIT)
    idx = reference_indices(len(images), num_real)
    features = extractor.extract(images[idx], batch_size)
    key = {"data_sha256": manifest["sha256"], "split": SPLIT, "num_real": int(len(idx)),
           **extractor.fingerprint()}
    ref = RefStats(FeatureSet.from_features(features), key)
    save_ref_stats(ref, out_path)
    return ref


def save_ref_stats(ref: RefStats, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, features=ref.stats.features, mu=ref.stats.mu, sigma=ref.stats.sigma,
                     key=np.array(json.dumps(ref.key, sort_keys=True)))


def load_ref_stats(path: str | Path) -> RefStats:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            stats = FeatureSet(features=z["features"], mu=z["mu"], sigma=z["sigma"])
            key = json.loads(str(z["key"]))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run `ganpipe ref-stats` first") from None
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a ganpipe reference-statistics file ({exc})") from None
    return RefStats(stats, key)
