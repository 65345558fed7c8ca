"""The training step: every architecture x loss, penalties, DiffAugment, EMA ramp-up, precision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ganpipe.core.params import parse_params
from ganpipe.nets.models import generator_config
from ganpipe.nets.resnet import levels
from ganpipe.training import losses
from ganpipe.training.augment import diff_augment, enabled
from ganpipe.training.engine import Engine, autocast_dtype, discriminator_norm
from tests.conftest import tiny_params_dict


def _engine(arch: str, loss: str, num_classes: int = 0, **train) -> Engine:
    d_steps = 2 if loss == "wgan-gp" else 1
    p = parse_params(
        tiny_params_dict(
            model={"arch": arch, "g_channels": 8, "d_channels": 8}, train={"loss": loss, "d_steps": d_steps, **train}
        )
    )
    config = generator_config(p.model.model_dump(), 3, 32, num_classes)
    torch.manual_seed(0)
    return Engine(config, arch, p.model.d_channels, p.train, torch.device("cpu"), augment=True)


PENALTIES = {"hinge": {"r1_gamma": 1.0}, "relativistic": {"r1_gamma": 0.5, "r2_gamma": 0.5}}  # R3GAN: R1 + R2


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize("loss", ["nonsaturating", "wgan-gp", "hinge", "lsgan", "relativistic"])
def test_each_architecture_and_loss_trains_with_finite_losses(arch, loss):
    e = _engine(arch, loss, **PENALTIES.get(loss, {}))
    before = {k: v.clone() for k, v in e.G.state_dict().items()}
    d_before = {k: v.clone() for k, v in e.D.state_dict().items()}
    for step in range(3):
        real = torch.rand(8, 3, 32, 32) * 2 - 1
        out = e.step([(real, None)] * e.tp.d_steps)
        e.update_ema((step + 1) * 8, 8)
        assert out.shape == (2,) and torch.isfinite(out).all(), out
    assert not e.bad.item()
    assert any(not torch.equal(before[k], v) for k, v in e.G.state_dict().items() if k.endswith("weight"))
    assert any(not torch.equal(d_before[k], v) for k, v in e.D.state_dict().items() if "weight" in k)
    z = torch.randn(4, e.G.z_dim)
    assert e.G_ema(z).shape == (4, 3, 32, 32)


def test_wgan_gp_critic_has_no_batch_norm_and_the_penalty_is_zero_for_a_unit_gradient():
    assert discriminator_norm("dcgan", "wgan-gp") == "layer" and discriminator_norm("dcgan", "hinge") == "batch"
    e = _engine("dcgan", "wgan-gp")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in e.D.modules())
    w = torch.randn(3 * 8 * 8)
    w = w / w.norm()  # a linear critic with a unit-norm weight: ||grad_x D|| = 1 everywhere

    def D(x, c):
        return x.flatten(1) @ w

    real, fake = torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    assert losses.gradient_penalty(D, real, fake, None).item() == pytest.approx(0.0, abs=1e-10)
    assert losses.gradient_penalty(lambda x, c: 3 * D(x, c), real, fake, None).item() == pytest.approx(4.0)


def test_r1_penalty_is_half_the_squared_input_gradient():
    x = torch.randn(4, 1, 2, 2, requires_grad=True)
    logits = (2 * x).flatten(1).sum(1)  # gradient 2 at each of 4 pixels: ||g||^2 = 16
    assert losses.r1_penalty(logits, x).item() == pytest.approx(8.0)


def test_losses_reward_the_discriminator_for_telling_real_from_fake():
    for kind in losses.LOSSES:
        # lsgan regresses to targets 1 (real) / 0 (fake); the others read logits
        right, wrong, unsure = ((1.0, 0.0), (0.0, 1.0), 0.5) if kind == "lsgan" else ((5.0, -5.0), (-5.0, 5.0), 0.0)
        full = lambda v: torch.full((8,), v)  # noqa: E731
        confident, confused = (
            losses.d_loss(kind, full(right[0]), full(right[1])),
            losses.d_loss(kind, full(unsure), full(unsure)),
        )
        assert confident < confused < losses.d_loss(kind, full(wrong[0]), full(wrong[1])), kind
        # G gains when D takes its fakes for real (the relativistic loss: for more real than the reals)
        real = full(unsure)
        assert losses.g_loss(kind, full(right[0]), real) < losses.g_loss(kind, full(right[1]), real), kind
    with pytest.raises(ValueError, match="allowed: nonsaturating, wgan-gp, hinge, lsgan, relativistic"):
        losses.d_loss("wasserstein", torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="needs D's logits on real images"):
        losses.g_loss("relativistic", torch.zeros(2))


def test_relativistic_losses_follow_the_formula_pair_by_pair():
    real, fake = [2.0, -1.0, 0.5, 3.0], [0.0, 1.5, 0.5, -2.0]
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    want_d = sum(softplus(-(r - f)) for r, f in zip(real, fake)) / 4
    want_g = sum(softplus(-(f - r)) for r, f in zip(real, fake)) / 4
    r, f = torch.tensor(real, dtype=torch.float64), torch.tensor(fake, dtype=torch.float64)
    assert losses.d_loss("relativistic", r, f).item() == pytest.approx(want_d, rel=1e-12)
    assert losses.g_loss("relativistic", f, r).item() == pytest.approx(want_g, rel=1e-12)
    # pairs, not batch means: re-pairing the same logits changes both losses
    assert losses.d_loss("relativistic", r, f.flip(0)).item() != pytest.approx(want_d, rel=1e-6)
    assert losses.g_loss("relativistic", f.flip(0), r).item() != pytest.approx(want_g, rel=1e-6)


def test_relativistic_discriminator_has_no_batch_norm():
    assert discriminator_norm("dcgan", "relativistic") == "layer"
    assert discriminator_norm("dcgan", "nonsaturating") == "batch"
    e = _engine("dcgan", "relativistic")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in e.D.modules())


class _LinearD(torch.nn.Module):
    """D(x) = w . x + b: grad_x D = w for every sample, so R1 = R2 = ||w||^2 / 2."""

    def __init__(self, n: int):
        super().__init__()
        self.lin = torch.nn.Linear(n, 1)

    def forward(self, x, c=None):
        return self.lin(x.flatten(1)).squeeze(1)


def _with_linear_d(e: Engine, n: int) -> _LinearD:
    D = _LinearD(n)
    e.D = e.D_run = e.D_penalty = e.D_plain = D
    e.augment = False
    return D


def _d_gradients(e: Engine, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
    """D's gradients of one d_update (the optimizer step is skipped)."""
    grads: dict[str, torch.Tensor] = {}

    def backward_only(loss, module, opt, scaler):
        loss.backward()
        grads.update({k: p.grad.clone() for k, p in module.named_parameters()})

    e._optimise = backward_only
    e.d_update(real, None, fake)
    return grads


def test_r2_penalty_is_half_the_squared_input_gradient_on_fakes():
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    x = torch.randn(6, 1, 2, 2, requires_grad=True)
    logits = x.flatten(1) @ w + 0.3
    assert losses.r2_penalty(logits, x).item() == pytest.approx(0.5 * w.square().sum().item())


@pytest.mark.parametrize("loss", ["nonsaturating", "relativistic"])
def test_r2_adds_gamma_w_to_a_linear_d_gradient_only_when_on(loss):
    torch.manual_seed(0)
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    grads = {}
    for gamma in (0.0, 0.7):
        e = _engine("dcgan", loss, r2_gamma=gamma)
        torch.manual_seed(1)
        D = _with_linear_d(e, 3 * 4 * 4)
        grads[gamma] = _d_gradients(e, real, fake)
    # r2_gamma = 0: exactly the adversarial loss's gradient
    D.zero_grad()
    losses.d_loss(loss, D(real), D(fake)).backward()
    assert torch.equal(grads[0.0]["lin.weight"], D.lin.weight.grad)
    assert torch.equal(grads[0.0]["lin.bias"], D.lin.bias.grad)
    # r2_gamma = 0.7: d/dw (0.7 * ||w||^2 / 2) = 0.7 w on top; the bias does not enter grad_x D
    torch.testing.assert_close(grads[0.7]["lin.weight"] - grads[0.0]["lin.weight"], 0.7 * D.lin.weight.detach())
    torch.testing.assert_close(grads[0.7]["lin.bias"], grads[0.0]["lin.bias"])


def test_r2_is_taken_on_the_fakes():
    """D(x) = sum_j w_j x_j^2 / 2 has grad_x D = w * x, so R2 (w = 1) adds E[fake_j^2] to dL/dw_j: the
    fakes' values, not the reals'."""

    class Quadratic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(8))

        def forward(self, x, c=None):
            return (x.flatten(1).square() * self.w).sum(1) / 2

    torch.manual_seed(0)
    real, fake = torch.randn(4, 2, 2, 2), 3 * torch.randn(4, 2, 2, 2)
    e = _engine("dcgan", "wgan-gp", r2_gamma=0.5, gp_lambda=0.0)  # d_loss = E D(fake) - E D(real)
    e.D = e.D_run = e.D_penalty = e.D_plain = Quadratic()
    e.augment = False
    r2, f2 = real.flatten(1).square().mean(0), fake.flatten(1).square().mean(0)
    torch.testing.assert_close(_d_gradients(e, real, fake)["w"], f2 / 2 - r2 / 2 + 0.5 * f2)


def test_relativistic_generator_loss_pairs_fakes_with_the_real_batch():
    n = 3 * 32 * 32
    torch.manual_seed(0)
    z = torch.randn(6, 16)
    real_a, real_b = torch.rand(6, 3, 32, 32) * 2 - 1, torch.rand(6, 3, 32, 32) * 2 - 1
    out, want = {}, {}
    for loss in ("relativistic", "nonsaturating"):
        for name, real in (("a", real_a), ("b", real_b)):
            e = _engine("dcgan", loss)
            torch.manual_seed(1)
            D = _with_linear_d(e, n)
            fake = e.G(z)
            with torch.no_grad():
                want[name] = F.softplus(D(real) - D(fake)).mean().item()
            out[loss, name] = e.g_update(fake, None, real).item()
    for name in ("a", "b"):
        assert out["relativistic", name] == pytest.approx(want[name], rel=1e-6)
    assert out["relativistic", "a"] != pytest.approx(out["relativistic", "b"], rel=1e-4)
    assert out["nonsaturating", "a"] == out["nonsaturating", "b"]  # the other losses ignore the reals


def test_relativistic_training_steps_move_both_networks_with_finite_losses():
    e = _engine("dcgan", "relativistic", r1_gamma=0.5, r2_gamma=0.5)
    g0, d0 = [p.clone() for p in e.G.parameters()], [p.clone() for p in e.D.parameters()]
    torch.manual_seed(2)
    for step in range(4):
        out = e.step([(torch.rand(8, 3, 32, 32) * 2 - 1, None)])
        e.update_ema((step + 1) * 8, 8)
        assert torch.isfinite(out).all(), out
        assert out[1] > 0 and out[0] > 0  # softplus plus non-negative penalties
    assert not e.bad.item()
    assert all(not torch.equal(a, b) for a, b in zip(g0, e.G.parameters()) if a.ndim == 4)
    assert all(not torch.equal(a, b) for a, b in zip(d0, e.D.parameters()) if a.ndim == 4)


def test_resnet_covers_32_to_256_pixels_and_refuses_others():
    assert [levels(r) for r in (32, 64, 128, 256)] == [3, 4, 5, 6]
    for bad in (16, 48, 512):
        with pytest.raises(ValueError, match="32..256"):
            levels(bad)


def test_resnet_projection_discriminator_uses_the_class():
    e = _engine("resnet", "hinge", num_classes=3)
    x = torch.randn(6, 3, 32, 32)
    a, b = e.D(x, torch.zeros(6, dtype=torch.long)), e.D(x, torch.full((6,), 2, dtype=torch.long))
    assert not torch.allclose(a, b)  # the projection term depends on c
    with pytest.raises(ValueError, match="one class per image"):
        e.D(x)


def test_diffaugment_is_random_differentiable_and_keeps_shape():
    x = torch.rand(16, 3, 16, 16, requires_grad=True)
    torch.manual_seed(0)
    a = diff_augment(x, ["color", "translation", "cutout"])
    torch.manual_seed(0)
    b = diff_augment(x, ["color", "translation", "cutout"])
    torch.manual_seed(1)
    c = diff_augment(x, ["color", "translation", "cutout"])
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    ones = torch.ones(64, 1, 16, 16)
    cut = diff_augment(ones, ["cutout"])
    zero_share = (cut == 0).float().mean(dim=(1, 2, 3))
    assert zero_share.max() <= 0.25 + 1e-6 and zero_share.mean() > 0.1  # an 8x8 hole, clipped at the edges
    moved = diff_augment(ones, ["translation"])
    border = (moved == 0).float().mean(dim=(1, 2, 3))
    assert border.max() <= 1 - (14 / 16) ** 2 + 1e-6  # shifts of at most 2 of 16 pixels, zero-filled
    assert enabled("auto", 9_999) and not enabled("auto", 10_000) and enabled(True, 10**6) and not enabled(False, 1)


def test_ema_half_life_ramps_up_with_images_seen():
    e = _engine("dcgan", "nonsaturating", ema_kimg=1.0, ema_rampup=0.05)
    with torch.no_grad():
        for p in e.G.parameters():
            p.add_(1.0)
    p0 = next(e.G_ema.parameters()).clone()
    e.update_ema(nimg=200, batch_size=8)  # half-life min(1000, 0.05 * 200 = 10) images
    moved_early = (next(e.G_ema.parameters()) - p0).abs().mean()
    target = (next(e.G.parameters()).detach() - p0).abs().mean()
    assert (moved_early / target).item() == pytest.approx(1 - 0.5 ** (8 / 10), rel=1e-4)
    e2 = _engine("dcgan", "nonsaturating", ema_kimg=1.0, ema_rampup=None)
    with torch.no_grad():
        for p in e2.G.parameters():
            p.add_(1.0)
    q0 = next(e2.G_ema.parameters()).clone()
    e2.update_ema(nimg=200, batch_size=8)
    moved = (next(e2.G_ema.parameters()) - q0).abs().mean() / (next(e2.G.parameters()).detach() - q0).abs().mean()
    assert moved.item() == pytest.approx(1 - 0.5 ** (8 / 1000), rel=1e-4)


def test_precision_follows_the_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("auto", cuda) == torch.bfloat16
    assert autocast_dtype("fp16", cpu) == torch.float16 and autocast_dtype("fp32", cuda) is None


def test_bf16_autocast_step_runs_on_cpu():
    e = _engine("dcgan", "hinge", precision="bf16")
    out = e.step([(torch.rand(8, 3, 32, 32) * 2 - 1, None)])
    assert torch.isfinite(out).all() and not math.isnan(out[0].item())


def test_fp16_with_several_critic_steps_and_penalties_runs_and_saves_both_scalers():
    e = _engine("dcgan", "wgan-gp", precision="fp16", r1_gamma=1.0)  # d_steps = 2
    for _ in range(2):
        out = e.step([(torch.rand(8, 3, 32, 32) * 2 - 1, None)] * e.tp.d_steps)
        assert torch.isfinite(out).all()
    state = e.state_dict()
    assert set(state["scaler"]) == {"D", "G"}
    e.load_state_dict(state)


def test_compile_leaves_a_spectrally_normalised_discriminator_eager(capsys):
    """Compiled, a spectral-norm D fails its first backward (its power iteration changes a tensor the
    compiled graph saved: pytorch/pytorch#185497, seen on CPU and CUDA); such a D runs eager, G compiled."""
    from torch._dynamo.eval_frame import OptimizedModule

    from ganpipe.nets.models import has_spectral_norm

    resnet, dcgan = _engine("resnet", "hinge", compile=True), _engine("dcgan", "nonsaturating", compile=True)
    assert has_spectral_norm(resnet.D) and not has_spectral_norm(dcgan.D)
    assert resnet.D_run is resnet.D and resnet.D_plain is resnet.D and isinstance(resnet.G_run, OptimizedModule)
    assert "D not (spectral norm" in capsys.readouterr().out
    assert all(isinstance(f, OptimizedModule) for f in (dcgan.G_run, dcgan.D_run, dcgan.D_plain))
    assert not isinstance(_engine("resnet", "hinge").G_run, OptimizedModule)  # compile off: nothing compiled
