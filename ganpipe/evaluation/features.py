"""Feature extractors: one pass over an image set gives the features every metric uses.

`inception`: the TF-compatible InceptionV3 pool3 features (2048-d) that FID and KID are defined on.
`tiny`: a small fixed-seed random conv net (64-d) for tests and smoke runs only; its scores are not
comparable with published numbers, and the protocol fingerprint says which extractor produced them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ganpipe.core.hashing import state_sha256
from ganpipe.core.params import EvalParams
from ganpipe.evaluation.inception import load_inception, resolve_weights

TINY_SEED = 1234


@dataclass
class Extractor:
    """A feature network and its identity; the network is built on first use, so a fully cached
    evaluation never loads it."""

    name: str
    build: Callable[[], nn.Module]
    weights_sha256: str
    weights_source: str  # where the weights came from, with the file's own sha256
    resize: str
    dim: int
    has_head: bool = False
    _net: nn.Module | None = None

    @property
    def net(self) -> nn.Module:
        if self._net is None:
            self._net = self.build()
        return self._net

    @torch.no_grad()
    def extract_all(self, images: np.ndarray | torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
        """One pass: uint8 [N, C, H, W] (C = 1 or 3) -> float32 features [N, dim] and, when the network
        has a classifier head, logits [N, classes]; batches do not change the result."""
        device = next(self.net.parameters()).device
        feats = np.empty((len(images), self.dim), dtype=np.float32)
        logits = []
        for i in range(0, len(images), batch_size):
            x = torch.as_tensor(np.asarray(images[i : i + batch_size])).to(device)
            if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
                raise ValueError(f"extractor needs uint8 [N, 1|3, H, W], got {x.dtype} {tuple(x.shape)}")
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            y = self.net(x)
            y = y if isinstance(y, tuple) else (y,)
            feats[i : i + len(x)] = y[0].float().cpu().numpy()
            if self.has_head:
                logits.append(y[1].float().cpu().numpy())
        return feats, (np.concatenate(logits) if logits else None)

    def extract(self, images: np.ndarray | torch.Tensor, batch_size: int) -> np.ndarray:
        """Features only."""
        return self.extract_all(images, batch_size)[0]

    def fingerprint(self) -> dict:
        return {"extractor": self.name, "weights_sha256": self.weights_sha256, "resize": self.resize}


class TinyFeatures(nn.Module):
    """Three strided convs and global average pooling on 32x32 inputs: fast, deterministic, 64-d."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(TINY_SEED)
        self.convs = nn.ModuleList([nn.Conv2d(3, 16, 3, 2, 1), nn.Conv2d(16, 32, 3, 2, 1), nn.Conv2d(32, 64, 3, 2, 1)])
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                conv.bias.zero_()
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - 128) / 128
        if x.shape[-2:] != (32, 32):
            x = nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x.mean(dim=(2, 3))


def build_extractor(p: EvalParams, device: torch.device | str = "cpu") -> Extractor:
    """The extractor named by `eval.extractor`, on `device`."""
    if p.extractor == "tiny":
        net = TinyFeatures().to(device)
        return Extractor("tiny-random-conv", lambda: net, state_sha256(net), "builtin", "bilinear-antialias-32", dim=64)
    weights = resolve_weights(p.inception_weights)
    # "logits_unbiased" is what the Inception Score uses (torch-fidelity's convention)
    outputs = ["2048", "logits_unbiased"] if weights.has_head else ["2048"]

    def build() -> nn.Module:
        # channels_last: ~1.5x faster convolutions on CPU (features differ by ~1e-6 from NCHW order)
        return load_inception(weights, outputs).to(device, memory_format=torch.channels_last)

    return Extractor(
        "inception-v3-tf-2015-12-05",
        build,
        weights.sha256,
        f"{weights.source}:{weights.path.name}:sha256={weights.file_sha256}",
        "tf1-bilinear-299",
        dim=2048,
        has_head=weights.has_head,
    )
