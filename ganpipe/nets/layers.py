"""Layers both architectures share.

Self-contained (torch only): this package ships inside the registered MLflow model.
"""

from __future__ import annotations

import torch
from torch import nn


def check_classes(module: nn.Module, c: torch.Tensor | None, n: int) -> None:
    if module.num_classes and (c is None or c.shape != (n,)):
        raise ValueError(
            f"this conditional network needs one class per image, got {None if c is None else tuple(c.shape)}"
        )
    if not module.num_classes and c is not None:
        raise ValueError("this network is unconditional: it takes no classes")


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose scale and shift depend on the class (de Vries et al. 2017; SNGAN, BigGAN); plain
    affine BatchNorm when num_classes is 0. The class gains and biases start at zero: plain BN.

    Why not concatenate a class code to z: then G can shrink z's weights and draw one image per class
    (it did, on digits). Here z is the first layer's only input and the BN after it renormalises that
    path, so z keeps its influence; the class acts through gain and bias.
    """

    def __init__(self, ch: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(ch, affine=not num_classes)
        self.num_classes = num_classes
        if num_classes:
            self.gain = nn.Embedding(num_classes, ch)  # scale = 1 + gain
            self.bias = nn.Embedding(num_classes, ch)
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        x = self.bn(x)
        if self.num_classes:
            x = x * (1 + self.gain(c))[:, :, None, None] + self.bias(c)[:, :, None, None]
        return x
