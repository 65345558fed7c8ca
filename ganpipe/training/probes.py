"""What each training snapshot measures: a quick KID and a mode-collapse probe, on fixed samples.

Both use one feature pass over a fixed latent batch of the EMA generator (seeds PROBE_SEED0...) and one
over a fixed subset of the training images, computed once per run. Neither touches the training RNG,
so measuring does not change what is trained (exact resume depends on it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ganpipe.evaluation.features import Extractor
from ganpipe.evaluation.kid import kernel_inception_distance
from ganpipe.evaluation.manifold import pairwise_distances
from ganpipe.nets.models import sample

PROBE_SEED0 = 20_000_000  # latent seeds of the probe batch: apart from evaluation and grid seeds
DUPLICATE_QUANTILE = 0.01  # a fake is a near-duplicate when its nearest fake is closer than this
# quantile of the real images' nearest-neighbour distances


def _nearest(d: np.ndarray) -> np.ndarray:
    d = d.copy()
    np.fill_diagonal(d, np.inf)
    return d.min(axis=1)


@dataclass
class Probe:
    """Features of the fixed real subset, and the statistics fakes are compared with."""

    extractor: Extractor
    real: np.ndarray
    batch_size: int
    seeds: list[int]

    @classmethod
    def build(cls, extractor: Extractor, images: np.ndarray, num: int, seed: int, batch_size: int = 64) -> Probe:
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(len(images), min(num, len(images)), replace=False))
        real = extractor.extract(np.asarray(images[idx]), batch_size).astype(np.float64)
        return cls(extractor, real, batch_size, list(range(PROBE_SEED0, PROBE_SEED0 + num)))

    def __post_init__(self) -> None:
        d = pairwise_distances(self.real, self.real)
        n = len(self.real)
        self.real_spread = float(d.sum() / (n * (n - 1)))
        self.duplicate_radius = float(np.quantile(_nearest(d), DUPLICATE_QUANTILE))

    @torch.no_grad()
    def measure(self, G_ema: torch.nn.Module) -> dict[str, float]:
        """quick_kid (unbiased KID on the probe sets), diversity (mean pairwise feature distance of the
        fakes / of the reals: about 1 for a healthy G, near 0 when it collapses) and duplicate_rate."""
        fake = self.extractor.extract(sample(G_ema, self.seeds, self.batch_size), self.batch_size).astype(np.float64)
        n = min(len(fake), len(self.real))
        kid, _ = kernel_inception_distance(self.real, fake, subset_size=n, subsets=1)
        d = pairwise_distances(fake, fake)
        spread = float(d.sum() / (len(fake) * (len(fake) - 1)))
        return {
            "quick_kid": kid,
            "diversity": spread / max(self.real_spread, 1e-12),
            "duplicate_rate": float((_nearest(d) <= self.duplicate_radius).mean()),
        }
