"""SNGAN-style residual generator and discriminator (Miyato et al. 2018; Gulrajani et al. 2017), 32-256 px.

G: z -> linear 4x4 -> up-sampling residual blocks (BN or class-conditional BN) -> BN, ReLU, conv, tanh.
D: down-sampling residual blocks with spectral norm on every layer -> ReLU, sum pooling, linear logit;
conditional D adds the projection term <embed(c), h> (Miyato & Koyama 2018).

Self-contained (torch only): this module ships inside the registered MLflow model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ganpipe.nets.layers import ConditionalBatchNorm2d, check_classes

MIN_RESOLUTION, MAX_RESOLUTION = 32, 256


def levels(resolution: int) -> int:
    """Up- (or down-) sampling blocks between 4x4 and `resolution`."""
    n = int(math.log2(resolution)) - 2
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION or 2 ** (n + 2) != resolution:
        raise ValueError(
            f"resnet needs a power-of-two resolution in {MIN_RESOLUTION}..{MAX_RESOLUTION}, got {resolution}"
        )
    return n


def _width(base: int, steps_from_output: int) -> int:
    return base * min(2**steps_from_output, 8)


def _xavier(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    nn.init.xavier_uniform_(layer.weight, gain)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return layer


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, num_classes: int):
        super().__init__()
        self.n1, self.n2 = ConditionalBatchNorm2d(cin, num_classes), ConditionalBatchNorm2d(cout, num_classes)
        self.c1 = _xavier(nn.Conv2d(cin, cout, 3, 1, 1), math.sqrt(2))
        self.c2 = _xavier(nn.Conv2d(cout, cout, 3, 1, 1), math.sqrt(2))
        self.sc = _xavier(nn.Conv2d(cin, cout, 1, 1, 0))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.n1(x, c)), scale_factor=2, mode="nearest")
        h = self.c2(F.relu(self.n2(self.c1(h), c)))
        return h + self.sc(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResNetGenerator(nn.Module):
    def __init__(self, z_dim: int, channels: int, resolution: int, width: int, num_classes: int = 0):
        super().__init__()
        n = levels(resolution)
        self.z_dim, self.num_classes, self.ch0 = z_dim, num_classes, _width(width, n)
        self.fc = _xavier(nn.Linear(z_dim, 16 * self.ch0))
        self.blocks = nn.ModuleList(
            GBlock(_width(width, n - i), _width(width, n - i - 1), num_classes) for i in range(n)
        )
        self.bn = nn.BatchNorm2d(width)
        self.out = _xavier(nn.Conv2d(width, channels, 3, 1, 1))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        check_classes(self, c, len(z))
        x = self.fc(z).view(len(z), self.ch0, 4, 4)
        for block in self.blocks:
            x = block(x, c)
        return torch.tanh(self.out(F.relu(self.bn(x))))


def _sn(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    return spectral_norm(_xavier(layer, gain))


class DBlock(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool, first: bool = False):
        super().__init__()
        self.c1 = _sn(nn.Conv2d(cin, cout, 3, 1, 1), math.sqrt(2))
        self.c2 = _sn(nn.Conv2d(cout, cout, 3, 1, 1), math.sqrt(2))
        self.sc = _sn(nn.Conv2d(cin, cout, 1, 1, 0)) if (cin != cout or down) else None
        self.down, self.first = down, first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c2(F.relu(self.c1(x if self.first else F.relu(x))))
        if self.down:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.first:  # SNGAN's optimized first block: pool before the 1x1 conv
            s = self.sc(F.avg_pool2d(s, 2))
        else:
            s = self.sc(s) if self.sc is not None else s
            s = F.avg_pool2d(s, 2) if self.down else s
        return h + s


class ResNetDiscriminator(nn.Module):
    def __init__(self, channels: int, resolution: int, width: int, num_classes: int = 0):
        super().__init__()
        n = levels(resolution)
        self.num_classes = num_classes
        chans = [_width(width, i) for i in range(n)]  # after each down block: res/2 ... 4
        blocks = [DBlock(channels, chans[0], down=True, first=True)]
        blocks += [DBlock(chans[i - 1], chans[i], down=True) for i in range(1, n)]
        blocks += [DBlock(chans[-1], chans[-1], down=False)]
        self.blocks = nn.Sequential(*blocks)
        self.fc = _sn(nn.Linear(chans[-1], 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, chans[-1])) if num_classes else None
        if self.embed is not None:
            nn.init.xavier_uniform_(self.embed.parametrizations.weight.original)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        check_classes(self, c, len(x))
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))
        out = self.fc(h).flatten()
        if self.embed is not None:
            out = out + (self.embed(c) * h).sum(dim=1)
        return out
