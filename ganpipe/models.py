"""Generator and discriminator networks, and the latent sampling every stage shares.

Self-contained (torch only): this module ships inside the registered MLflow model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _num_blocks(resolution: int) -> int:
    n = int(math.log2(resolution)) - 2
    if n < 1 or 2 ** (n + 2) != resolution:
        raise ValueError(f"DCGAN needs a power-of-two resolution >= 8, got {resolution}")
    return n


def check_classes(module: nn.Module, c: torch.Tensor | None, n: int) -> None:
    if module.num_classes and (c is None or c.shape != (n,)):
        raise ValueError(f"this conditional network needs one class per image, got {None if c is None else tuple(c.shape)}")
    if not module.num_classes and c is not None:
        raise ValueError("this network is unconditional: it takes no classes")


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose scale and shift depend on the class (de Vries et al. 2017; SNGAN, BigGAN).

    Why not concatenate a class code to z: then G can shrink z's weights and draw one image per class
    (it did, on digits). Here z is the first layer's only input and the BN after it renormalises that
    path, so z keeps its influence; the class acts through gain and bias.
    """

    def __init__(self, ch: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(ch, affine=False)
        self.gain = nn.Embedding(num_classes, ch)  # scale = 1 + gain: starts as plain BN
        self.bias = nn.Embedding(num_classes, ch)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * (1 + self.gain(c))[:, :, None, None] + self.bias(c)[:, :, None, None]


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

        layers: list[nn.Module] = [nn.Conv2d(channels + num_classes, ch, 4, 2, 1, bias=False),
                                   nn.LeakyReLU(0.2, True)]
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


ARCHS = ("dcgan", "resnet")


def generator_config(model: dict, channels: int, resolution: int, num_classes: int = 0) -> dict:
    """Everything needed to rebuild the generator: stored in checkpoints and registered models."""
    return {"arch": model["arch"], "z_dim": int(model["z_dim"]), "g_channels": int(model["g_channels"]),
            "channels": int(channels), "resolution": int(resolution), "num_classes": int(num_classes)}


def build_generator(config: dict) -> nn.Module:
    """The generator of `config`, freshly initialised (DCGAN: N(0, 0.02); resnet: Xavier)."""
    arch, k = config["arch"], config.get("num_classes", 0)
    if arch == "dcgan":
        G = DCGANGenerator(config["z_dim"], config["channels"], config["resolution"], config["g_channels"], k)
        G.apply(init_weights)
        return G
    if arch == "resnet":
        from ganpipe.resnet import ResNetGenerator  # resnet imports this module

        return ResNetGenerator(config["z_dim"], config["channels"], config["resolution"], config["g_channels"], k)
    raise ValueError(f"unknown generator arch {arch!r} (allowed: {', '.join(ARCHS)})")


def build_discriminator(arch: str, channels: int, resolution: int, width: int, num_classes: int = 0,
                        norm: str = "batch") -> nn.Module:
    """The discriminator; `norm` ("batch" | "layer") applies to dcgan (resnet uses spectral norm only)."""
    if arch == "dcgan":
        D = DCGANDiscriminator(channels, resolution, width, num_classes, norm)
        D.apply(init_weights)
        return D
    if arch == "resnet":
        from ganpipe.resnet import ResNetDiscriminator

        return ResNetDiscriminator(channels, resolution, width, num_classes)
    raise ValueError(f"unknown discriminator arch {arch!r} (allowed: {', '.join(ARCHS)})")


def latents(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    """One latent per seed, each from its own CPU generator: independent of batch size and device."""
    z = torch.empty(len(seeds), z_dim)
    for i, s in enumerate(seeds):
        z[i] = torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s)))
    return z


def classes(G: nn.Module, seeds: Sequence[int], class_: int | None = None) -> torch.Tensor | None:
    """The class of each seed's image for a conditional G (None for an unconditional one): `class_` for
    all, or by default seed mod num_classes, so any run of consecutive seeds covers the classes evenly."""
    k = getattr(G, "num_classes", 0)
    if not k:
        if class_ is not None:
            raise ValueError(f"class {class_}: this generator is unconditional")
        return None
    if class_ is not None and not 0 <= class_ < k:
        raise ValueError(f"class {class_}: this generator has classes 0..{k - 1}")
    return torch.tensor([class_ if class_ is not None else int(s) % k for s in seeds], dtype=torch.long)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 in [0, 255], same layout."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def sample(G: nn.Module, seeds: Sequence[int], batch_size: int = 256, class_: int | None = None) -> torch.Tensor:
    """uint8 [N, C, H, W] images for `seeds` from G (in eval mode), on the CPU (classes: see `classes`)."""
    device = next(G.parameters()).device
    seeds = list(seeds)
    c_all = classes(G, seeds, class_)
    out = []
    for i in range(0, len(seeds), batch_size):
        z = latents(seeds[i:i + batch_size], G.z_dim).to(device)
        c = None if c_all is None else c_all[i:i + batch_size].to(device)
        out.append(to_uint8(G(z, c)).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.uint8)


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors (names, dtypes, shapes, bytes, in name order): the identity of weights,
    independent of the file they came in (torch.save archives differ byte-wise between saves)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    return h.hexdigest()


def state_sha256(module: nn.Module) -> str:
    """The identity of a module's weights (its state_dict)."""
    return tensors_sha256(module.state_dict())
