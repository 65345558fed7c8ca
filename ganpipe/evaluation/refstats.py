"""The `ref-stats` stage: features and statistics of the real reference set, computed once.

Content-addressed: the key is the dataset's content hash, the extractor and its weights' sha256, the
resize method and N (and which subset). A key seen before is served from the cache, whatever else
changed, so nothing recomputes reference statistics while those are unchanged. The stage's DVC output
(`data/ref_stats.npz`) is the same `.npz` format (no pickle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ganpipe.core import cache
from ganpipe.core.errors import DataError
from ganpipe.data.prepare import load_split, read_manifest
from ganpipe.data.shards import Picked
from ganpipe.evaluation.features import Extractor
from ganpipe.evaluation.metrics import FeatureSet

SPLIT = "train"
SUBSET_SEED = 0  # which real images form the reference when num_real < the split's size
CACHE_KIND = "ref-stats"


@dataclass(frozen=True)
class RefStats:
    stats: FeatureSet
    key: dict  # data_sha256, split, num_real, subset_seed, extractor, weights_sha256, resize
    from_cache: bool = False


def reference_indices(n_available: int, num_real: int) -> np.ndarray:
    """A fixed subset: the same data and N always give the same reference images."""
    n = min(num_real, n_available)
    return np.sort(np.random.default_rng(SUBSET_SEED).permutation(n_available)[:n])


def compute_ref_stats(
    extractor: Extractor, num_real: int, batch_size: int, prepared_dir: str | Path, out_path: str | Path
) -> RefStats:
    """Reference statistics of up to `num_real` real training images, from the cache when possible."""
    manifest = read_manifest(prepared_dir)
    images, _ = load_split(prepared_dir, SPLIT)
    idx = reference_indices(len(images), num_real)
    key = {
        "data_sha256": manifest["sha256"],
        "split": SPLIT,
        "num_real": int(len(idx)),
        "subset_seed": SUBSET_SEED,
        **extractor.fingerprint(),
    }
    arrays = cache.get(CACHE_KIND, key)
    hit = arrays is not None
    if not hit:
        fs = FeatureSet.from_features(extractor.extract(Picked(images, idx), batch_size))
        arrays = {"features": fs.features, "mu": fs.mu, "sigma": fs.sigma}
        cache.put(CACHE_KIND, key, arrays)
    ref = RefStats(FeatureSet(arrays["features"], arrays["mu"], arrays["sigma"]), key, from_cache=hit)
    save_ref_stats(ref, out_path)
    return ref


def save_ref_stats(ref: RefStats, path: str | Path) -> None:
    cache.save_arrays(path, ref.key, {"features": ref.stats.features, "mu": ref.stats.mu, "sigma": ref.stats.sigma})


def load_ref_stats(path: str | Path) -> RefStats:
    path = Path(path)
    try:
        key, a = cache.load_arrays(path)
        return RefStats(FeatureSet(a["features"], a["mu"], a["sigma"]), key)
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run `ganpipe ref-stats` first") from None
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a ganpipe reference-statistics file ({exc})") from None
