"""DCGAN generator and discriminator (Radford et al. 2015), 8 px and up, powers of two.

Self-contained (torch only): this package ships inside the registered MLflow model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ganpipe.nets.layers import ConditionalBatchNorm2d, check_classes


def _num_blocks(resolution: int) -> int:
    n = int(math.log2(resolution)) - 2
    if n < 1 or 2 ** (n + 2) != resolution:
        raise ValueError(f"DCGAN needs a power-of-two resolution >= 8, got {resolution}")
    return n


class DCGANGenerator(nn.Module):
    """Radford et al. 2015: z -> 4x4 -> ... -> resolution, transposed convs, BN + ReLU, tanh.

    Conditional (num_classes > 0): every BN is a class-conditional BN.
    """

    def __init__(self, z_dim: int, channels: int, resolution: int, width: int, num_classes: int = 0):
        super().__init__()
        n = _num_blocks(resolution)
        ch = width * 2 ** (n - 1)
        self.num_classes = num_classes

        def norm(c: int) -> nn.Module:
            return ConditionalBatchNorm2d(c, num_classes) if num_classes else nn.BatchNorm2d(c)

        layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim, ch, 4, 1, 0, bias=False), norm(ch), nn.ReLU(True)]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), norm(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.z_dim = z_dim

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        check_classes(self, c, len(z))
        x = z[:, :, None, None]
        for layer in self.net:
            x = layer(x, c) if isinstance(layer, ConditionalBatchNorm2d) else layer(x)
        return x


class DCGANDiscriminator(nn.Module):
    """Mirror of the generator: strided convs, BN (not on the first layer) + LeakyReLU(0.2), logit.

    `norm="layer"` (for WGAN-GP, whose penalty needs each sample's gradient alone) uses layer norm.
    Conditional (num_classes > 0): the class enters as one-hot input planes (Mirza & Osindero 2014).
    A projection head (Miyato & Koyama 2018) was tried: on digits with this DCGAN and 60 kimg, G ignored
    the class with its small initialisation and training collapsed to grey with a larger one.
    """

    def __init__(self, channels: int, resolution: int, width: int, num_classes: int = 0, norm: str = "batch"):
        super().__init__()
        n = _num_blocks(resolution)
        ch = width
        self.num_classes = num_classes

        def normalise(c: int) -> nn.Module:  # a gradient penalty needs per-sample D: no batch norm then
            return nn.BatchNorm2d(c) if norm == "batch" else nn.GroupNorm(1, c)

        layers: list[nn.Module] = [nn.Conv2d(channels + num_classes, ch, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for _ in range(n - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), normalise(ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        check_classes(self, c, len(x))
        if self.num_classes:
            planes = F.one_hot(c, self.num_classes).to(x.dtype)[:, :, None, None]
            x = torch.cat([x, planes.expand(-1, -1, *x.shape[2:])], dim=1)
        return self.net(x).flatten()


def init_weights(m: nn.Module) -> None:
    """DCGAN init: N(0, 0.02) convs, N(1, 0.02) BN scales."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.affine:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):  # G's class gains and biases: start near plain BN
        nn.init.normal_(m.weight, 0.0, 0.02)
