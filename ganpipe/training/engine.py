"""The adversarial training step: networks, optimizers, losses, penalties, DiffAugment, EMA, precision.

`Engine.step` runs `train.d_steps` discriminator updates and one generator update without a host sync:
losses stay on the device and a device-side flag records any non-finite loss or over-large gradient
norm; the training loop reads both every `train.log_every_steps` steps. `state_dict` /
`load_state_dict` cover everything exact resume needs except the RNG states and data order
(`ganpipe.training.state` lays out the whole checkpoint).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
from torch import nn

from ganpipe.core.params import TrainParams
from ganpipe.nets.models import build_discriminator, build_generator, has_spectral_norm
from ganpipe.training import losses
from ganpipe.training.augment import diff_augment
from ganpipe.training.state import Key

Batch = tuple[torch.Tensor, torch.Tensor | None]  # real images in [-1, 1], classes (or None)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `train.precision` on `device` (None: full fp32)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def discriminator_norm(arch: str, loss: str) -> str:
    """A gradient penalty needs D's output for each sample to depend on that sample alone; so does the
    relativistic loss, which pairs each real logit with one fake logit."""
    return "layer" if arch == "dcgan" and loss in ("wgan-gp", "relativistic") else "batch"


class Engine:
    def __init__(
        self,
        config: dict,
        arch: str,
        d_channels: int,
        tp: TrainParams,
        device: torch.device,
        augment: bool,
        distributed: bool = False,
    ):
        self.tp, self.device, self.augment = tp, device, augment
        self.G = build_generator(config).to(device)
        self.D = build_discriminator(
            arch,
            config["channels"],
            config["resolution"],
            d_channels,
            config.get("num_classes", 0),
            discriminator_norm(arch, tp.loss),
        ).to(device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.channels_last = device.type == "cuda"  # faster convolutions on tensor cores
        if self.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=tp.lr, betas=(tp.beta1, tp.beta2))
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=tp.lr, betas=(tp.beta1, tp.beta2))
        self.dtype = autocast_dtype(tp.precision, device)
        # fp16 only; one scaler per network, each updated after its own step (several D steps per G step)
        self.scaler_D = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.scaler_G = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        G_run: Callable = self.G
        D_run: Callable = self.D
        if distributed:  # gradients all-reduced across processes; rank 0's initial weights broadcast
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            G_run = DDP(self.G, device_ids=ids)
            D_run = DDP(self.D, device_ids=ids)
            self.G_ema.load_state_dict(self.G.state_dict())
        # Spectral norm's power iteration updates its vectors in place at every forward; compiled, D's
        # backward then finds a saved tensor changed by D's next forward (pytorch/pytorch#185497): such a
        # D stays eager
        compile_D = tp.compile and not has_spectral_norm(self.D)
        if tp.compile and not compile_D:
            print("train.compile: G compiled; D not (spectral norm, pytorch/pytorch#185497)", flush=True)
        if tp.compile:
            G_run = torch.compile(G_run)
        if compile_D:
            D_run = torch.compile(D_run)
        self.G_run, self.D_run = G_run, D_run
        # D as the generator's loss sees it: no DDP hooks (D's gradients are not wanted there)
        self.D_plain: Callable = torch.compile(self.D) if compile_D else self.D
        # gradient penalties differentiate twice, which compiled graphs do not support
        self.D_penalty: Callable = self.D if tp.compile else D_run
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.ema_params = list(self.G_ema.parameters())
        self.ema_buffers = list(self.G_ema.buffers())

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _aug(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.tp.augment_policy) if self.augment else x

    def _z(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.G.z_dim, device=self.device)

    def _optimise(
        self, loss: torch.Tensor, module: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler
    ) -> None:
        """Backward, the divergence check on the (unscaled) gradient norm, the optimizer step."""
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        # fp16: the scaler skips steps with inf gradients by design; there only losses count
        if self.tp.max_grad_norm is not None and not scaler.is_enabled():
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            self.bad |= ~(norm <= self.tp.max_grad_norm)  # NaN compares false: counted as bad
        scaler.step(opt)
        scaler.update()

    def d_update(self, real: torch.Tensor, c: torch.Tensor | None, fake: torch.Tensor) -> torch.Tensor:
        tp = self.tp
        self.D.requires_grad_(True)
        penalise_r1, penalise_r2 = tp.r1_gamma > 0, tp.r2_gamma > 0
        if penalise_r1:
            real = real.detach().requires_grad_(True)
        if penalise_r2:  # fp32 and twice differentiable, as R1 below; the gradient stops at G's output
            fake = fake.detach().requires_grad_(True)
            fake_logits = self.D_penalty(self._aug(fake), c)
        else:
            with self._autocast():
                fake_logits = self.D_run(self._aug(fake.detach()), c)
        if penalise_r1:  # in fp32 through a D that can be differentiated twice (no underflow, no compile)
            real_logits = self.D_penalty(self._aug(real), c)
        else:
            with self._autocast():
                real_logits = self.D_run(self._aug(real), c)
        loss = losses.d_loss(tp.loss, real_logits.float(), fake_logits.float())
        if tp.loss == "wgan-gp" and tp.gp_lambda > 0:  # fp32, same reason
            loss = loss + tp.gp_lambda * losses.gradient_penalty(
                lambda x, y: self.D_penalty(self._aug(x), y), real, fake, c
            )
        if penalise_r1:
            loss = loss + tp.r1_gamma * losses.r1_penalty(real_logits, real)
        if penalise_r2:
            loss = loss + tp.r2_gamma * losses.r2_penalty(fake_logits, fake)
        self._optimise(loss, self.D, self.opt_D, self.scaler_D)
        return loss.detach()

    def g_update(self, fake: torch.Tensor, c: torch.Tensor | None, real: torch.Tensor) -> torch.Tensor:
        """`real`: the last D update's real batch, which the relativistic loss pairs with the fakes."""
        self.D.requires_grad_(False)  # the G step needs gradients through D, not of D
        with self._autocast():
            fake_logits = self.D_plain(self._aug(fake), c).float()
            real_logits = None
            if self.tp.loss == "relativistic":  # a constant to G: no graph kept
                with torch.no_grad():
                    real_logits = self.D_plain(self._aug(real), c).float()
            loss = losses.g_loss(self.tp.loss, fake_logits, real_logits)
        self._optimise(loss, self.G, self.opt_G, self.scaler_G)
        return loss.detach()

    def step(self, batches: list[Batch]) -> torch.Tensor:
        """One iteration: a D update per real batch (len = d_steps), then one G update. The fakes of the
        last D update carry the graph the G update backpropagates through (one G forward, as in the
        classic DCGAN loop), and its reals are the relativistic G loss's pairs. Returns [loss_G, loss_D]
        on the device."""
        for i, (real, c) in enumerate(batches):
            last = i == len(batches) - 1
            z = self._z(len(real))
            with self._autocast(), contextlib.nullcontext() if last else torch.no_grad():
                fake = self.G_run(z, c)
            loss_D = self.d_update(real, c, fake)
        loss_G = self.g_update(fake, c, real)
        losses_ = torch.stack([loss_G, loss_D])
        self.bad |= ~torch.isfinite(losses_).all()
        return losses_

    @torch.no_grad()
    def update_ema(self, nimg: int, batch_size: int) -> None:
        """G_ema <- lerp towards G with a half-life of ema_kimg, ramped up to ema_rampup x kimg seen."""
        tp = self.tp
        if tp.ema_kimg <= 0:
            beta = 0.0
        else:
            ema_nimg = tp.ema_kimg * 1000
            if tp.ema_rampup is not None:
                ema_nimg = min(ema_nimg, nimg * tp.ema_rampup)
            beta = 0.5 ** (batch_size / max(ema_nimg, 1e-8))
        torch._foreach_lerp_(self.ema_params, [p.detach() for p in self.G.parameters()], 1.0 - beta)
        for b_ema, b in zip(self.ema_buffers, self.G.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict:
        """The networks', optimizers' and scalers' state_dicts, under their checkpoint keys."""
        return {
            Key.G: self.G.state_dict(),
            Key.D: self.D.state_dict(),
            Key.G_EMA: self.G_ema.state_dict(),
            Key.OPT_G: self.opt_G.state_dict(),
            Key.OPT_D: self.opt_D.state_dict(),
            Key.SCALER: {"D": self.scaler_D.state_dict(), "G": self.scaler_G.state_dict()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Load `state_dict`'s entries (a whole checkpoint will do: other keys are ignored)."""
        self.G.load_state_dict(state[Key.G])
        self.D.load_state_dict(state[Key.D])
        self.G_ema.load_state_dict(state[Key.G_EMA])
        self.opt_G.load_state_dict(state[Key.OPT_G])
        self.opt_D.load_state_dict(state[Key.OPT_D])
        for key, scaler in (("D", self.scaler_D), ("G", self.scaler_G)):
            if state.get(Key.SCALER, {}).get(key):
                scaler.load_state_dict(state[Key.SCALER][key])
        self.bad.zero_()
