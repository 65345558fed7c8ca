"""Networks and latent sampling."""

from __future__ import annotations

import pytest
import torch

from ganpipe.nets.dcgan import init_weights
from ganpipe.nets.models import build_discriminator, build_generator, classes, latents, sample


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


def test_conditional_networks_take_one_class_per_image():
    cfg = {"arch": "dcgan", "z_dim": 8, "g_channels": 4, "channels": 1, "resolution": 16, "num_classes": 3}
    torch.manual_seed(0)
    G = build_generator(cfg).apply(init_weights).eval()
    D = build_discriminator("dcgan", 1, 16, 4, num_classes=3).apply(init_weights)
    z = latents(range(4), 8)
    c = torch.tensor([0, 1, 2, 0])
    x = G(z, c)
    assert x.shape == (4, 1, 16, 16) and D(x, c).shape == (4,)
    # the class changes the image and the projection changes the logit
    assert not torch.equal(G(z, torch.zeros(4, dtype=torch.long)), G(z, torch.ones(4, dtype=torch.long)))
    assert not torch.equal(D(x, c), D(x, (c + 1) % 3))
    with pytest.raises(ValueError, match="one class per image"):
        G(z)
    # default classes cycle with the seed; an explicit class applies to every image
    assert classes(G, range(5, 10)).tolist() == [2, 0, 1, 2, 0]
    assert classes(G, range(3), 1).tolist() == [1, 1, 1]
    assert torch.equal(sample(G, [7, 8], class_=2), to_uint8_of(G, [7, 8], 2))


def to_uint8_of(G, seeds, k):
    from ganpipe.nets.models import to_uint8

    with torch.no_grad():
        return to_uint8(G(latents(seeds, G.z_dim), torch.full((len(seeds),), k)))


def test_unconditional_networks_refuse_classes():
    G = build_generator({"arch": "dcgan", "z_dim": 8, "g_channels": 4, "channels": 1, "resolution": 16}).eval()
    assert classes(G, range(3)) is None
    with pytest.raises(ValueError, match="unconditional"):
        sample(G, [0], class_=1)
    with pytest.raises(ValueError, match="takes no classes"):
        G(latents([0], 8), torch.tensor([0]))


def test_the_architectures_built_are_exactly_the_ones_params_allows():
    from typing import get_args

    from ganpipe.core.params import Arch
    from ganpipe.nets.models import DISCRIMINATORS, GENERATORS

    assert tuple(GENERATORS) == tuple(DISCRIMINATORS) == get_args(Arch)
