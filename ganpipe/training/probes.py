"""What each training snapshot measures, on a fixed latent batch of the EMA generator (seeds PROBE_SEED0...).

Two feature spaces, because they cost very differently on a CPU:
- the collapse watch (diversity, duplicate rate) runs at every snapshot on WATCH_IMAGES fakes in the tiny
  fixed random conv net: a collapsing generator draws near-identical images, which any feature space
  shows, and that net costs milliseconds;
- the quick KID, which chooses the snapshot the stage outputs, runs on the first `train.snapshot_kid_images`
  of those fakes in `train.snapshot_extractor`'s space (InceptionV3 by default, ~10 images/s on 2 CPU
  cores) at the last `train.snapshot_kid_last` snapshots only: the candidates for best. Its real features
  depend on the data and the extractor alone, so they come from the content-addressed cache after the
  first run on a dataset.
A later candidate is chosen unless its quick KID exceeds the lowest so far by more than its own bootstrap
std (`later_wins`): with a few dozen images the KIDs of neighbouring snapshots differ by less than their
noise, and an EMA generator that trains well keeps improving (bench/probe_choice.py: on the digits every
one of the last 4 snapshots was better than the one before). An earlier snapshot is kept only when a later
one is clearly worse: a run that went bad.
Neither touches the training RNG, so measuring does not change what is trained (exact resume depends on it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ganpipe.core import cache
from ganpipe.core.params import EvalParams
from ganpipe.data.shards import Picked, ShardedImages
from ganpipe.evaluation.features import Extractor, build_extractor
from ganpipe.evaluation.kid import bootstrap_kid, kernel_inception_distance
from ganpipe.evaluation.manifold import pairwise_distances
from ganpipe.nets.models import sample

PROBE_SEED0 = 20_000_000  # latent seeds of the probe batch: apart from evaluation and grid seeds
DUPLICATE_QUANTILE = 0.01  # a fake is a near-duplicate when its nearest fake is closer than this
# quantile of the real images' nearest-neighbour distances
CACHE_KIND = "probe-reals"
WATCH_EXTRACTOR = "tiny"
WATCH_IMAGES = 128  # fakes (and reals) of the collapse watch
KID_STD_REPLICATES = 100  # bootstrap resamples of the fakes for quick_kid_std
# images through the KID's extractor at once: InceptionV3 at 299 px holds ~12 MB of activations per image,
# and it runs inside training (peak RSS of a CPU process that extracts: 1.07 GB at 8, 1.26 at 16, 1.72 at
# 64, at the same 7 img/s on 2 cores)
EXTRACT_BATCH = 8


def _nearest(d: np.ndarray) -> np.ndarray:
    d = d.copy()
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


def real_subset(n_available: int, num: int, seed: int) -> np.ndarray:
    """Which training images the probe compares with: fixed by the seed and N."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_available, min(num, n_available), replace=False))


def is_candidate(nimg: int, total_img: int, snapshot_img: int, last: int) -> bool:
    """Whether the snapshot at `nimg` is one of the last `last` of the run (0: every snapshot is). A run
    snapshots every `snapshot_img` images and at its end; a snapshot's nimg may overshoot its point by
    less than a step."""
    points = [*range(snapshot_img, total_img, snapshot_img), total_img]
    return last == 0 or last >= len(points) or nimg >= points[-last]


def quick_kid(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    """The unbiased KID of the probe sets and its std over KID_STD_REPLICATES bootstrap resamples of the
    fakes (a fixed RNG: measuring never draws from the training's)."""
    n = min(len(fake), len(real))
    kid, _ = kernel_inception_distance(real, fake, subset_size=n, subsets=1)
    return kid, float(bootstrap_kid(real, fake, KID_STD_REPLICATES, np.random.default_rng(0)).std())


def later_wins(quick_kid: float, quick_kid_std: float, lowest: float | None) -> bool:
    """Whether a candidate snapshot (later than every one before it) becomes the best: unless its quick KID
    is above the lowest of the earlier candidates by more than its own bootstrap std."""
    return lowest is None or quick_kid <= lowest + quick_kid_std


@dataclass
class Probe:
    """Features of the fixed real subset in both spaces, and the statistics fakes are compared with."""

    watch: Extractor
    watch_real: np.ndarray
    kid: Extractor
    kid_real: np.ndarray
    batch_size: int
    seeds: list[int]  # the fixed latent batch: the watch reads the first watch_num, the quick KID the first kid_num
    watch_num: int
    kid_num: int

    @classmethod
    def build(
        cls,
        eval_params: EvalParams,
        kid_extractor_name: str,
        images: ShardedImages | np.ndarray,
        num: int,
        seed: int,
        data_sha256: str,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        watch_num: int = WATCH_IMAGES,
    ) -> Probe:
        """`num`: images of the quick KID (fakes and reals); `watch_num`: of the collapse watch."""
        watch_idx, kid_idx = real_subset(len(images), watch_num, seed), real_subset(len(images), num, seed)
        watch = build_extractor(eval_params.model_copy(update={"extractor": WATCH_EXTRACTOR}), device)
        watch_real = watch.extract(Picked(images, watch_idx), batch_size).astype(np.float64)
        if kid_extractor_name == WATCH_EXTRACTOR:
            kid = watch
            kid_real = watch.extract(Picked(images, kid_idx), batch_size).astype(np.float64)
        else:
            kid = build_extractor(eval_params.model_copy(update={"extractor": kid_extractor_name}), device)
            key = {"data_sha256": data_sha256, "subset_seed": seed, "num": len(kid_idx), **kid.fingerprint()}
            if (hit := cache.get(CACHE_KIND, key)) is None:
                hit = {"features": kid.extract(Picked(images, kid_idx), EXTRACT_BATCH)}
                cache.put(CACHE_KIND, key, hit)
            kid_real = hit["features"].astype(np.float64)
        seeds = list(range(PROBE_SEED0, PROBE_SEED0 + max(watch_num, num)))
        return cls(watch, watch_real, kid, kid_real, batch_size, seeds, watch_num, num)

    def __post_init__(self) -> None:
        d = pairwise_distances(self.watch_real, self.watch_real)
        n = len(self.watch_real)
        self.real_spread = float(d.sum() / (n * (n - 1)))
        self.duplicate_radius = float(np.quantile(_nearest(d), DUPLICATE_QUANTILE))

    @torch.no_grad()
    def measure(self, G_ema: torch.nn.Module, kid: bool = True) -> dict[str, float]:
        """diversity (mean pairwise feature distance of the fakes / of the reals: about 1 for a healthy G,
        near 0 when it collapses) and duplicate_rate; with `kid`, quick_kid (unbiased KID on the probe sets)
        and quick_kid_std (its std over bootstrap resamples of the fakes)."""
        images = sample(G_ema, self.seeds, self.batch_size)
        fake = self.watch.extract(images[: self.watch_num], self.batch_size).astype(np.float64)
        d = pairwise_distances(fake, fake)
        spread = float(d.sum() / (len(fake) * (len(fake) - 1)))
        out = {
            "diversity": spread / max(self.real_spread, 1e-12),
            "duplicate_rate": float((_nearest(d) <= self.duplicate_radius).mean()),
        }
        if kid:
            fake = self.kid.extract(images[: self.kid_num], EXTRACT_BATCH).astype(np.float64)
            out["quick_kid"], out["quick_kid_std"] = quick_kid(self.kid_real, fake)
        return out
