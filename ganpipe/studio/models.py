"""The studio's generators: model choices resolved within the project's registry, generators cached per
version, and images made with the provenance `ganpipe generate` writes (so `--replay` gives the same
pixels).

A model is chosen as a version number (`3`, `v3`) or an alias of the project's registered model
(`champion`); nothing else is accepted, so the studio never loads a model from outside the registry.
An alias is resolved on every request (a promotion moves it), a version's generator is loaded once.
"""

from __future__ import annotations

import base64
import re
import threading
from collections import OrderedDict

import torch
from mlflow.tracking import MlflowClient

from ganpipe.core.images import grid, png_bytes, provenance, to_pil
from ganpipe.nets.models import classes, latents
from ganpipe.registry.aliases import current_holder
from ganpipe.registry.refs import Scope, load_generator
from ganpipe.serving.generate import render, slerp
from ganpipe.studio.catalog import NotFound

SEED_LIMIT = 2**63
MAX_FRAMES = 96
CACHED_VERSIONS = 4  # generators kept in memory (least recently used goes first)
_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


class BadInput(ValueError):
    """A request the studio refuses (HTTP 400); the message says which field and why."""


def integer(raw, what: str, low: int, high: int) -> int:
    """`raw` (a query string value) as an integer in low..high-1, or BadInput."""
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise BadInput(f"{what} must be an integer, got {str(raw)[:40]!r}") from None
    if not low <= value < high:
        raise BadInput(f"{what} {value} is outside {low}..{high - 1}")
    return value


def truncation(raw) -> float:
    """psi in (0, 2]."""
    try:
        psi = float(str(raw).strip())
    except ValueError:
        raise BadInput(f"psi must be a number, got {str(raw)[:40]!r}") from None
    if not 0 < psi <= 2:
        raise BadInput(f"psi {psi:g} is outside (0, 2]")
    return psi


class Generators:
    """The project's registered generators by version, loaded on first use and kept (LRU)."""

    def __init__(self, model_name: str, max_images: int, batch_size: int) -> None:
        self.model_name, self.max_images, self.batch_size = model_name, max_images, batch_size
        self._cache: OrderedDict[str, torch.nn.Module] = OrderedDict()
        self._lock = threading.Lock()  # one load at a time: two tabs asking at once load it once

    def resolve(self, model: str) -> tuple[str, str]:
        """(version, alias or '') of a model choice; BadInput for anything but a version or an alias."""
        model = str(model).strip()
        client = MlflowClient()
        digits = model[1:] if model[:1] in "vV" else model
        if digits.isdigit():
            try:
                client.get_model_version(self.model_name, str(int(digits)))
            except Exception:
                raise NotFound(f"{self.model_name} has no version {int(digits)}") from None
            return str(int(digits)), ""
        if not _ALIAS.fullmatch(model):
            raise BadInput(
                f"model must be a version number or an alias of {self.model_name} (e.g. champion), got {model[:60]!r}"
            )
        holder = current_holder(client, self.model_name, model)
        if holder is None:
            raise NotFound(f"{self.model_name} has no alias {model!r}")
        return str(holder.version), model

    def get(self, version: str) -> torch.nn.Module:
        with self._lock:
            if version in self._cache:
                self._cache.move_to_end(version)
                return self._cache[version]
            G = load_generator(f"models:/{self.model_name}/{version}", Scope.only(self.model_name))
            self._cache[version] = G
            while len(self._cache) > CACHED_VERSIONS:
                self._cache.popitem(last=False)
            return G

    def meta(self, model: str) -> tuple[torch.nn.Module, dict]:
        """The generator of a model choice and its provenance (pinned version, alias, run, data)."""
        version, alias = self.resolve(model)
        G = self.get(version)
        mv = MlflowClient().get_model_version(self.model_name, version)
        return G, {
            "model": self.model_name,
            "model_uri": f"models:/{self.model_name}/{version}",
            "version": version,
            "alias": alias,
            "run_id": mv.run_id or "",
            "data_sha256": mv.tags.get("data_sha256", ""),
        }

    def info(self, model: str) -> dict:
        G, meta = self.meta(model)
        one = render(G, latents([0], G.z_dim), 1.0, _classes(G, [0], None))
        return {
            **meta,
            "num_classes": int(G.num_classes),
            "resolution": int(one.shape[-1]),
            "channels": int(one.shape[1]),
            "z_dim": int(G.z_dim),
            "max_images": self.max_images,
        }

    def request(self, G, seed, n, psi, class_) -> tuple[int, int, float, int | None]:
        """Validated (seed, n, psi, class) of a generate request for G; BadInput names the field."""
        n = integer(n, "n", 1, self.max_images + 1)
        seed = integer(seed, "seed", 0, SEED_LIMIT - n + 1)
        psi = truncation(psi)
        if class_ in (None, ""):
            return seed, n, psi, None
        if not G.num_classes:
            raise BadInput("this generator is unconditional: it has no classes")
        return seed, n, psi, integer(class_, "class", 0, G.num_classes)

    def _render(self, model: str, seed, n, psi, class_):
        """(meta, first seed, psi, the requested class, the classes used, uint8 images) of a request."""
        G, meta = self.meta(model)
        seed, n, psi, class_ = self.request(G, seed, n, psi, class_)
        seeds = list(range(seed, seed + n))
        c = _classes(G, seeds, class_)
        return meta, seed, psi, class_, c, render(G, latents(seeds, G.z_dim), psi, c, self.batch_size)

    def images(self, model: str, seed, n, psi=1.0, class_=None) -> dict:
        """n images for seeds seed..seed+n-1, each a base64 PNG with its provenance."""
        meta, seed, psi, _, c, pixels = self._render(model, seed, n, psi, class_)
        out = []
        for i, img in enumerate(pixels):
            k = None if c is None else int(c[i])
            text = provenance(meta, seed + i, psi, k)
            png = png_bytes(to_pil(img), text)
            out.append({"seed": seed + i, "psi": psi, "class": k, "png": _b64(png), "provenance": text})
        return {"model": meta, "images": out}

    def grid_png(self, model: str, seed, n, psi=1.0, class_=None) -> bytes:
        """One PNG: the image (n = 1) or the grid of n, with the provenance `ganpipe generate` writes."""
        meta, seed, psi, class_, c, pixels = self._render(model, seed, n, psi, class_)
        if len(pixels) == 1 and c is not None:
            class_ = int(c[0])
        picture = to_pil(pixels[0]) if len(pixels) == 1 else grid(pixels)
        return png_bytes(picture, provenance(meta, seed, psi, class_, len(pixels)))

    def interpolation(self, model: str, a, b, frames, psi=1.0, class_=None) -> dict:
        """Frames along the spherical path from seed a's latent to seed b's (one class all along)."""
        G, meta = self.meta(model)
        a = integer(a, "seed A", 0, SEED_LIMIT)
        b = integer(b, "seed B", 0, SEED_LIMIT)
        frames = integer(frames, "frames", 2, MAX_FRAMES + 1)
        _, _, psi, class_ = self.request(G, a, 1, psi, class_)
        z = latents([a, b], G.z_dim)
        path = slerp(z[0], z[1], torch.linspace(0, 1, frames))
        c0 = _classes(G, [a], class_)
        pixels = render(G, path, psi, None if c0 is None else c0.expand(frames), self.batch_size)
        return {"model": meta, "frames": [_b64(png_bytes(to_pil(img))) for img in pixels]}


def _classes(G, seeds, class_):
    try:
        return classes(G, seeds, class_)
    except ValueError as exc:
        raise BadInput(f"class: {exc}") from None


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")
