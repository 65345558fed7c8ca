"""Building the networks from their config, and the latent sampling every stage shares.

Self-contained (torch only): this package ships inside the registered MLflow model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ganpipe.nets.dcgan import DCGANDiscriminator, DCGANGenerator, init_weights
from ganpipe.nets.resnet import ResNetDiscriminator, ResNetGenerator


def generator_config(model: dict, channels: int, resolution: int, num_classes: int = 0) -> dict:
    """Everything needed to rebuild the generator: stored in checkpoints and registered models."""
    return {
        "arch": model["arch"],
        "z_dim": int(model["z_dim"]),
        "g_channels": int(model["g_channels"]),
        "channels": int(channels),
        "resolution": int(resolution),
        "num_classes": int(num_classes),
    }


GENERATORS = {"dcgan": DCGANGenerator, "resnet": ResNetGenerator}  # keys: params' `Arch` (tested)
DISCRIMINATORS = {"dcgan": DCGANDiscriminator, "resnet": ResNetDiscriminator}


def build_generator(config: dict) -> nn.Module:
    """The generator of `config`, freshly initialised (DCGAN: N(0, 0.02); resnet: Xavier)."""
    arch, k = config["arch"], config.get("num_classes", 0)
    if arch not in GENERATORS:
        raise ValueError(f"unknown generator arch {arch!r} (allowed: {', '.join(GENERATORS)})")
    G = GENERATORS[arch](config["z_dim"], config["channels"], config["resolution"], config["g_channels"], k)
    if arch == "dcgan":
        G.apply(init_weights)
    return G


def build_discriminator(
    arch: str, channels: int, resolution: int, width: int, num_classes: int = 0, norm: str = "batch"
) -> nn.Module:
    """The discriminator; `norm` ("batch" | "layer") applies to dcgan (resnet uses spectral norm only)."""
    if arch == "dcgan":
        D = DCGANDiscriminator(channels, resolution, width, num_classes, norm)
        D.apply(init_weights)
        return D
    if arch in DISCRIMINATORS:
        return DISCRIMINATORS[arch](channels, resolution, width, num_classes)
    raise ValueError(f"unknown discriminator arch {arch!r} (allowed: {', '.join(DISCRIMINATORS)})")


def has_spectral_norm(module: nn.Module) -> bool:
    """Whether any layer of `module` is spectrally normalised (torch's spectral_norm parametrization)."""
    from torch.nn.utils import parametrize

    return any(
        type(p).__name__ == "_SpectralNorm"
        for m in module.modules()
        if parametrize.is_parametrized(m)
        for plist in m.parametrizations.values()
        for p in plist
    )


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
        z = latents(seeds[i : i + batch_size], G.z_dim).to(device)
        c = None if c_all is None else c_all[i : i + batch_size].to(device)
        out.append(to_uint8(G(z, c)).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.uint8)
