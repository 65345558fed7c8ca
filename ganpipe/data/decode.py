"""One image file's bytes -> a uint8 [C, R, R] array for a GAN dataset, or a `SkipImage` saying why not.

Pillow only. Bad files are expected in scraped folders, so each is a per-file skip with a short reason,
never a crash of the whole `prepare`, and never a silently damaged image in the training set.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from pathlib import Path
from typing import get_args

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ganpipe.core.params import Crop

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CROPS = get_args(Crop)

# What Pillow's parsers and decoders raise on damaged bytes (truncated data is an OSError).
_CORRUPT = (OSError, SyntaxError, ValueError, EOFError, struct.error)
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_WIDE_GRAY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


class SkipImage(Exception):
    """This file cannot go into the dataset; the message is a short human reason ("truncated or corrupt
    image: ...", "not an image", "zero-byte file", "decompression bomb (...)", "unreadable (...)")."""


def read_file(path: str | Path) -> bytes:
    """The file's bytes; `SkipImage` if it cannot be read or is empty."""
    try:
        data = Path(path).read_bytes()
    except PermissionError:
        raise SkipImage("unreadable (permission denied)") from None
    except OSError as e:
        raise SkipImage(f"unreadable ({e.strerror or type(e).__name__})") from None
    if not data:
        raise SkipImage("zero-byte file")
    return data


def decode(data: bytes, name: str, resolution: int, channels: int, crop: str = "center") -> np.ndarray:
    """Decode one image file's bytes into C-contiguous uint8 [channels, resolution, resolution].

    `name` is the file's name; a suffix outside IMAGE_SUFFIXES is skipped (the same rule as listing), but
    the format is read from the content, so a PNG named .jpg still decodes. Only the first frame of an
    animation is used and EXIF orientation is applied. `crop`: "center" cuts the central square; "pad"
    pads to a square with black (0), as StyleGAN2-ADA's dataset_tool `center-crop-wide` does.
    Transparent pixels are composited on white. Raises `SkipImage` for anything that cannot be used.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
        raise SkipImage(f"not an image (suffix {Path(name).suffix or 'missing'!r})")
    if not data:
        raise SkipImage("zero-byte file")
    return from_image(_load(data, resolution), resolution, channels, crop)


def from_image(img: Image.Image, resolution: int, channels: int, crop: str = "center") -> np.ndarray:
    """A decoded PIL image (any mode) -> C-contiguous uint8 [channels, resolution, resolution], by the same
    rules as `decode`: the one path for files, bundled arrays and rendered emoji alike."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    img = _to_8bit(img)
    img = img.convert("L" if channels == 1 else "RGB")  # "L" is ITU-R 601-2 luma; L -> RGB replicates
    img = _square(img, crop)
    if img.size != (resolution, resolution):
        # Antialiased: clean-fid showed aliasing resizers shift FID by several points.
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    arr = np.asarray(img)
    return np.ascontiguousarray(arr[None] if channels == 1 else arr.transpose(2, 0, 1))


def _load(data: bytes, resolution: int) -> Image.Image:
    """Open and fully decode the first frame, upright; decompression bombs and damage become SkipImage."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        # Pillow only warns between 1x and 2x its pixel limit; a bomb there is still a bomb. The filter is
        # restored on exit, but catch_warnings is process-global: decode in processes, not threads.
        # ImageFile.LOAD_TRUNCATED_IMAGES is left False, so truncated data raises.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format == "JPEG":
                # libjpeg decodes at 1/2, 1/4 or 1/8 scale for free; draft keeps both sides >= 2x the
                # target, so LANCZOS still does the antialiased part. Much of prepare's speed on large
                # photos comes from this.
                img.draft(img.mode, (2 * resolution, 2 * resolution))
            img.load()  # Image.open only reads the header; truncation shows up here
            return ImageOps.exif_transpose(img)  # a new single-frame image: frame 0 of an animation
    except UnidentifiedImageError:
        raise SkipImage("not an image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's message quotes 2x the limit in the error band; say the limit the user actually set.
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise SkipImage(
            f"decompression bomb ({found[1]} pixels > {limit})" if found else f"decompression bomb ({e})"
        ) from None
    except _CORRUPT as e:
        raise SkipImage(f"truncated or corrupt image: {e}") from None


def _to_8bit(img: Image.Image) -> Image.Image:
    """An 8-bit "L" or "RGB" image: wide grayscale rescaled, CMYK/YCbCr/... converted, alpha on white."""
    if img.mode in _WIDE_GRAY_MODES:
        # Pillow's own I;16 -> L conversion clips at 255 (all but the darkest 1/256 turns white);
        # assume the 16-bit range and rescale so 65535 -> 255.
        wide = np.asarray(img).astype(np.float64).clip(0, 65535)
        return Image.fromarray(np.rint(wide / 257.0).astype(np.uint8), "L")
    if img.mode == "F":
        raise SkipImage("unsupported mode F (floating-point pixels have no agreed range)")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        # White, not black: emoji/icon/sprite datasets have transparent backgrounds that are drawn on
        # white, and black would turn every outline into a dark halo the GAN must learn.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in ("L", "RGB"):
        return img
    return img.convert("RGB")  # 1, P, CMYK, YCbCr, LAB, HSV


def _square(img: Image.Image, crop: str) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    if crop == "center":
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        return img.crop((left, top, left + s, top + s))
    s = max(w, h)
    canvas = Image.new(img.mode, (s, s), 0)
    canvas.paste(img, ((s - w) // 2, (s - h) // 2))
    return canvas
