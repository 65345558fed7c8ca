"""Networks and latent sampling."""

from __future__ import annotations

import pytest
import torch

from ganpipe.models import build_discriminator, build_generator, latents, sample


@pytest.mark.parametrize("resolution,channels", [(16, 1), (32, 1), (64, 3)])
def test_generator_and_discriminator_shapes(resolution, channels):
    cfg = {"arch": "dcgan", "z_dim": 8, "g_channels": 4, "channels": channels, "resolution": resolution}
    G = build_generator(cfg)
    D = build_discriminator("dcgan", channels, resolution, 4)
    x = G(torch.randn(3, 8))
    assert x.shape == (3, channels, resolution, resolution)
    assert x.abs().max() <= 1.0
    assert D(x).shape == (3,)


def test_latents_depend_on_seed_only():
    z = latents([5, 6, 7], 16)
    assert torch.equal(z[1], latents([6], 16)[0])
    assert not torch.equal(z[0], z[1])


def test_sample_is_independent_of_batch_size():
    torch.manual_seed(0)
    G = build_generator({"arch": "dcgan", "z_dim": 8, "g_channels": 4, "channels": 1, "resolution": 16}).eval()
    seeds = list(range(10))
    a = sample(G, seeds, batch_size=10)
    b = sample(G, seeds, batch_size=3)
    assert a.dtype == torch.uint8 and a.shape == (10, 1, 16, 16)
    assert torch.equal(a, b)


def test_unknown_arch_is_rejected():
    with pytest.raises(ValueError, match="allowed: dcgan"):
        build_generator({"arch": "nope", "z_dim": 8, "g_channels": 4, "channels": 1, "resolution": 16})
