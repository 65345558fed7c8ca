"""Adversarial losses by name (`train.loss`) and the gradient penalties.

`d_loss` / `g_loss` take D's logits; every loss is a mean over the batch. The relativistic loss compares
real and fake logits pairwise (`real[i]` with `fake[i]`), so the generator's loss needs D's logits on a
real batch too. WGAN-GP's penalty takes D itself (it evaluates D at interpolates); R1 and R2 take the
logits and the input they were computed from, which must require grad.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

import torch
import torch.nn.functional as F

from ganpipe.core.params import Loss

LOSSES = get_args(Loss)


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator (critic) loss on D's logits for real and fake images."""
    if kind == "nonsaturating":  # -log s(D(x)) - log(1 - s(D(G(z)))) (Goodfellow et al. 2014)
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "wgan-gp":  # Wasserstein critic (Arjovsky et al. 2017); the penalty is added separately
        return fake.mean() - real.mean()
    if kind == "hinge":  # Lim & Ye 2017; SNGAN, BigGAN
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "lsgan":  # least squares, targets 1 (real) and 0 (fake) (Mao et al. 2017)
        return 0.5 * ((real - 1).square().mean() + fake.square().mean())
    if kind == "relativistic":  # RpGAN: -log s(D(x_i) - D(G(z_i))) (Jolicoeur-Martineau 2019; R3GAN, Huang et al. 2024)
        return F.softplus(fake - real).mean()
    raise ValueError(f"unknown loss {kind!r} (allowed: {', '.join(LOSSES)})")


def g_loss(kind: str, fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """Generator loss on D's logits for fake images (and, for `relativistic`, for a real batch of the
    same size; the other losses ignore `real`)."""
    if kind == "nonsaturating":  # -log s(D(G(z))): strong gradients while D wins
        return F.softplus(-fake).mean()
    if kind in ("wgan-gp", "hinge"):
        return -fake.mean()
    if kind == "lsgan":
        return 0.5 * (fake - 1).square().mean()
    if kind == "relativistic":  # -log s(D(G(z_i)) - D(x_i)): G pushes each fake above its paired real
        if real is None:
            raise ValueError("the relativistic generator loss needs D's logits on real images")
        return F.softplus(real - fake).mean()
    raise ValueError(f"unknown loss {kind!r} (allowed: {', '.join(LOSSES)})")


def gradient_penalty(D: Callable, real: torch.Tensor, fake: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E[(||grad_x D(x)|| - 1)^2] at random interpolates of real and fake."""
    t = torch.rand(len(real), 1, 1, 1, device=real.device, dtype=real.dtype)
    x = (t * real.detach() + (1 - t) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x, c).float().sum(), x, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


def _zero_centred_penalty(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """E[||grad_x D(x)||^2] / 2; the sum's gradient is each sample's own when D treats samples apart."""
    (grad,) = torch.autograd.grad(logits.float().sum(), x, create_graph=True)
    return 0.5 * grad.flatten(1).square().sum(dim=1).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E[||grad_x D(x)||^2] / 2 on real images; `real` must require grad."""
    return _zero_centred_penalty(real_logits, real)


def r2_penalty(fake_logits: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """R2 (Mescheder et al. 2018; with R1 in R3GAN, Huang et al. 2024): E[||grad_x D(x)||^2] / 2 on
    generated images, detached from G; `fake` must require grad."""
    return _zero_centred_penalty(fake_logits, fake)
