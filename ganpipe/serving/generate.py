"""Content generation from a registered model (`models:/...`) or a checkpoint file.

Image i uses latent seed `seed + i`, so the same seed always gives the same image, whatever N.
Truncation `psi` pulls latents toward the mean latent (0 for a N(0, I) prior): less variety, higher
fidelity. Every PNG carries its provenance in text chunks, and `replay` regenerates it from them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ganpipe.core import tracking
from ganpipe.core.errors import DataError
from ganpipe.core.images import PROVENANCE as PREFIX
from ganpipe.core.images import grid, png_text, provenance, save_png, to_pil
from ganpipe.core.io import atomic_path
from ganpipe.nets.models import classes, latents, to_uint8


def _load(model: str, root: str | Path, allow_foreign: bool = False):
    from ganpipe.registry.refs import Scope, load_generator, model_meta

    tracking.configure(root)
    scope = Scope.project(root, allow_foreign)
    meta = model_meta(model, scope)
    return load_generator(meta["model_uri"], scope), meta


def _classes(G: torch.nn.Module, seeds, class_: int | None) -> torch.Tensor | None:
    try:
        return classes(G, seeds, class_)
    except ValueError as exc:
        raise DataError(f"--class: {exc}") from None


@torch.no_grad()
def render(
    G: torch.nn.Module, z: torch.Tensor, psi: float, c: torch.Tensor | None = None, batch_size: int = 256
) -> np.ndarray:
    """uint8 [N, C, H, W] from latents z (and classes c of a conditional G), truncated by psi."""
    out = [
        to_uint8(G(z[i : i + batch_size] * psi, None if c is None else c[i : i + batch_size])).numpy()
        for i in range(0, len(z), batch_size)
    ]
    return np.concatenate(out)


def generate(
    model: str,
    n: int,
    seed: int,
    out: str | Path,
    psi: float = 1.0,
    class_: int | None = None,
    root: str | Path = ".",
    allow_foreign: bool = False,
) -> list[Path]:
    """`n` images for seeds seed..seed+n-1: one grid PNG, or one PNG per image when `out` is a directory
    (ends with '/' or exists as one). For a conditional model every image has class `class_`, or by
    default seed mod num_classes. Only the project's models load unless `allow_foreign`. Returns the
    files written."""
    G, meta = _load(model, root, allow_foreign)
    seeds = range(seed, seed + n)
    c = _classes(G, seeds, class_)
    images = render(G, latents(seeds, G.z_dim), psi, c)
    as_dir = str(out).endswith("/") or Path(out).is_dir()
    out = Path(out)
    if as_dir:
        out.mkdir(parents=True, exist_ok=True)
        # Each file records its own class: replaying it alone gives the same image.
        return [
            save_png(
                to_pil(img),
                out / f"seed{seed + i:06d}.png",
                provenance(meta, seed + i, psi, None if c is None else int(c[i])),
            )
            for i, img in enumerate(images)
        ]
    picture = to_pil(images[0]) if n == 1 else grid(images)
    return [save_png(picture, out, provenance(meta, seed, psi, class_, n))]


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation: Gaussian latents keep their typical norm along the path."""
    an, bn = a / a.norm(), b / b.norm()
    omega = torch.arccos((an * bn).sum().clamp(-1, 1))
    if omega.abs() < 1e-6:
        return a + (b - a) * t[:, None]
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so)[:, None] * a + (torch.sin(t * omega) / so)[:, None] * b


def animate(
    model: str,
    seeds: list[int],
    frames: int,
    out: str | Path,
    fps: int = 12,
    psi: float = 1.0,
    root: str | Path = ".",
    class_: int | None = None,
    allow_foreign: bool = False,
) -> Path:
    """Interpolate through the latents of `seeds` (two seeds: an interpolation; more: a walk that
    returns to the first) into an animated GIF or an MP4, chosen by the suffix of `out`. A conditional
    model keeps one class along the path: `class_`, or by default the first seed's."""
    out = Path(out)
    if out.suffix.lower() not in (".gif", ".mp4"):
        raise DataError(f"{out}: animations are written as .gif or .mp4")
    if len(seeds) < 2 or frames < 2:
        raise DataError("an animation needs at least two seeds and two frames per step")
    G, _ = _load(model, root, allow_foreign)
    z = latents(seeds, G.z_dim)
    c0 = _classes(G, seeds[:1], class_)
    stops = list(range(len(seeds))) + ([0] if len(seeds) > 2 else [])
    t = torch.linspace(0, 1, frames)
    path = torch.cat(
        [slerp(z[a], z[b], t if i == len(stops) - 2 else t[:-1]) for i, (a, b) in enumerate(zip(stops, stops[1:]))]
    )
    images = render(G, path, psi, None if c0 is None else c0.expand(len(path)))
    rgb = np.repeat(images, 3, axis=1) if images.shape[1] == 1 else images
    with atomic_path(out, suffix=out.suffix.lower()) as tmp:
        import imageio.v3 as iio

        if out.suffix.lower() == ".gif":
            iio.imwrite(tmp, rgb.transpose(0, 2, 3, 1), duration=1000 / fps, loop=0)
        else:
            iio.imwrite(tmp, rgb.transpose(0, 2, 3, 1), fps=fps, codec="libx264", macro_block_size=1)
    return out


def replay(png: str | Path, out: str | Path, root: str | Path = ".", allow_foreign: bool = False) -> Path:
    """Regenerate a PNG written by `generate` from its provenance chunks (pinned model version). The PNG
    names the model: anything outside the project's scope is refused unless `allow_foreign`."""
    text = png_text(png)
    if f"{PREFIX}model_uri" not in text:
        raise DataError(f"{png}: no ganpipe provenance in this PNG")
    cls = text.get(f"{PREFIX}class") or None
    return generate(
        text[f"{PREFIX}model_uri"],
        int(text[f"{PREFIX}n"]),
        int(text[f"{PREFIX}seed"]),
        out,
        float(text[f"{PREFIX}psi"]),
        None if cls is None else int(cls),
        root,
        allow_foreign,
    )[0]
