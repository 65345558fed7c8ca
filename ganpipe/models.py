"""Generator and discriminator networks, and the latent sampling every stage shares.

Self-contained (torch only): this module ships inside the registered MLflow model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
from torch import nn


def _num_blocks(resolution: int) -> int:
    n = int(math.log2(resolution)) - 2
    if n < 1 or 2 ** (n + 2) != resolution:
        raise ValueError(f"DCGAN needs a power-of-two resolution >= 8, got {resolution}")
    return n


class DCGANGenerator(nn.Module):
    """Radford et al. 2015: z -> 4x4 -> ... -> resolution, transposed convs, BN + ReLU, tanh."""

    def __init__(self, z_dim: int, channels: int, resolution: int, width: int):
        super().__init__()
        n = _num_blocks(resolution)
        ch = width * 2 ** (n - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2),
                       nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.z_dim = z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """Mirror of the generator: strided convs, BN (not on the first layer) + LeakyReLU(0.2), logit."""

    def __init__(self, channels: int, resolution: int, width: int):
        super().__init__()
        n = _num_blocks(resolution)
        ch = width
        layers: list[nn.Module] = [nn.Conv2d(channels, ch, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for _ in range(n - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2),
                       nn.LeakyReLU(0.2, True)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0, bias=False)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


def init_weights(m: nn.Module) -> None:
    """DCGAN init: N(0, 0.02) convs, N(1, 0.02) BN scales."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def generator_config(model: dict, channels: int, resolution: int) -> dict:
    """Everything needed to rebuild the generator: stored in checkpoints and registered models."""
    return {"arch": model["arch"], "z_dim": int(model["z_dim"]), "g_channels": int(model["g_channels"]),
            "channels": int(channels), "resolution": int(resolution)}


def build_generator(config: dict) -> nn.Module:
    if config["arch"] != "dcgan":
        raise ValueError(f"unknown generator arch {config['arch']!r} (allowed: dcgan)")
    return DCGANGenerator(config["z_dim"], config["channels"], config["resolution"], config["g_channels"])


def build_discriminator(arch: str, channels: int, resolution: int, width: int) -> nn.Module:
    if arch != "dcgan":
        raise ValueError(f"unknown discriminator arch {arch!r} (allowed: dcgan)")
    return DCGANDiscriminator(channels, resolution, width)


def latents(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    """One latent per seed, each from its own CPU generator: independent of batch size and device."""
    z = torch.empty(len(seeds), z_dim)
    for i, s in enumerate(seeds):
        z[i] = torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s)))
    return z


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 in [0, 255], same layout."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def sample(G: nn.Module, seeds: Sequence[int], batch_size: int = 256) -> torch.Tensor:
    """uint8 [N, C, H, W] images for `seeds` from G (in eval mode), on the CPU."""
    device = next(G.parameters()).device
    z_dim = G.z_dim
    out = []
    for i in range(0, len(seeds), batch_size):
        z = latents(seeds[i:i + batch_size], z_dim).to(device)
        out.append(to_uint8(G(z)).cpu())
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
