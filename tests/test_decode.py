"""ganpipe.decode: every bad input it promises to skip is fed to it; every mode it converts is checked."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from ganpipe.data.decode import IMAGE_SUFFIXES, SkipImage, decode, read_file

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def load(path: Path, resolution: int = 8, channels: int = 3, crop: str = "center") -> np.ndarray:
    """What a dataset builder does with one file."""
    return decode(read_file(path), path.name, resolution, channels, crop)


def noise(w: int = 64, h: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def pixel(out: np.ndarray, y: int, x: int) -> tuple[int, ...]:
    return tuple(int(v) for v in out[:, y, x])


# ---- the output contract ---------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_output_is_contiguous_uint8_chw(tmp_path, channels):
    out = load(write(tmp_path, "a.png", encode(noise(40, 30), "PNG")), resolution=16, channels=channels)
    assert out.dtype == np.uint8 and out.shape == (channels, 16, 16) and out.flags["C_CONTIGUOUS"]


def test_bad_arguments_are_programming_errors():
    data = encode(noise(8, 8), "PNG")
    with pytest.raises(ValueError, match="channels"):
        decode(data, "a.png", 8, 4)
    with pytest.raises(ValueError, match="crop"):
        decode(data, "a.png", 8, 3, crop="stretch")


# ---- bad inputs: skipped with a reason ------------------------------------------------------------------


def test_zero_byte_file(tmp_path):
    path = write(tmp_path, "empty.png", b"")
    with pytest.raises(SkipImage, match="^zero-byte file$"):
        read_file(path)
    with pytest.raises(SkipImage, match="^zero-byte file$"):
        decode(b"", "empty.png", 8, 3)


@pytest.mark.parametrize("fmt, name", [("JPEG", "cut.jpg"), ("PNG", "cut.png")])
def test_truncated_file(tmp_path, fmt, name):
    data = encode(noise(), fmt)
    path = write(tmp_path, name, data[: len(data) // 2])
    with pytest.raises(SkipImage, match="^truncated or corrupt image: image file is truncated"):
        load(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_text_file_named_png(tmp_path):
    with pytest.raises(SkipImage, match="^not an image$"):
        load(write(tmp_path, "readme.png", b"this is not a picture\n"))


def test_suffix_outside_image_suffixes_is_skipped_but_content_decides_the_format(tmp_path):
    png = encode(noise(8, 8), "PNG")
    with pytest.raises(SkipImage, match="not an image"):
        load(write(tmp_path, "notes.txt", png))
    assert ".jpg" in IMAGE_SUFFIXES
    assert load(write(tmp_path, "misnamed.JPG", png)).shape == (3, 8, 8)  # a PNG called .JPG still decodes


@pytest.mark.parametrize("side, band", [(40, "warning"), (64, "error")])  # 1600 px: 1x-2x; 4096 px: > 2x
def test_decompression_bomb(tmp_path, monkeypatch, side, band):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = write(tmp_path, "bomb.png", encode(noise(side, side), "PNG"))
    filters_before = list(warnings.filters)
    with pytest.raises(SkipImage, match=rf"^decompression bomb \({side * side} pixels > 1000\)$"):
        load(path)
    assert warnings.filters == filters_before  # the local "error" filter did not leak


def test_under_the_pixel_limit_decodes(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert load(write(tmp_path, "ok.png", encode(noise(30, 30), "PNG"))).shape == (3, 8, 8)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root (or non-POSIX) reads anything")
def test_file_without_read_permission(tmp_path):
    path = write(tmp_path, "secret.png", encode(noise(8, 8), "PNG"))
    path.chmod(0)
    try:
        with pytest.raises(SkipImage, match=r"^unreadable \(permission denied\)$"):
            read_file(path)
    finally:
        path.chmod(0o644)


def test_permission_error_is_a_skip_even_as_root(tmp_path, monkeypatch):
    """The real chmod test above is skipped under root (CI containers); this one feeds the same error."""

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(SkipImage, match=r"^unreadable \(permission denied\)$"):
        read_file(tmp_path / "secret.png")


def test_unreadable_paths(tmp_path):
    with pytest.raises(SkipImage, match=r"^unreadable \(No such file or directory\)$"):
        read_file(tmp_path / "vanished.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(SkipImage, match=r"^unreadable \("):
        read_file(tmp_path / "dir.png")


# ---- modes ---------------------------------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    cmyk_red = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    out = load(write(tmp_path, "cmyk.jpg", encode(cmyk_red, "JPEG", quality=95)))
    assert np.abs(out.reshape(3, -1).mean(1) - RED).max() < 8


@pytest.mark.parametrize("fmt, name", [("PNG", "ramp16.png"), ("TIFF", "ramp32.tif")])
def test_16_bit_grayscale_is_rescaled_not_clipped(tmp_path, fmt, name):
    ramp = np.tile(np.linspace(0, 65535, 64).round(), (64, 1))
    img = Image.fromarray(ramp.astype(np.uint16 if fmt == "PNG" else np.int32))
    assert img.mode == ("I;16" if fmt == "PNG" else "I")
    out = load(write(tmp_path, name, encode(img, fmt)), resolution=64, channels=1)[0]
    assert out.min() <= 2 and out.max() >= 250
    assert (np.diff(out[32].astype(int)) >= 0).all()  # still a ramp, not a wall of 255
    np.testing.assert_array_equal(out, np.rint(ramp / 257).astype(np.uint8))


def test_palette_png_with_transparency_on_white(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([*RED, *GREEN] + [0] * (256 * 3 - 6))
    img.paste(1, (4, 0, 8, 8))  # right half: opaque green; left half: index 0, transparent (red underneath)
    out = load(write(tmp_path, "pal.png", encode(img, "PNG", transparency=0)))
    assert pixel(out, 4, 0) == WHITE and pixel(out, 4, 7) == GREEN


def test_rgba_transparent_is_white_and_opaque_keeps_colour(tmp_path):
    arr = np.zeros((8, 8, 4), dtype=np.uint8)  # left half: fully transparent black
    arr[:, 4:] = (*RED, 255)
    out = load(write(tmp_path, "rgba.png", encode(Image.fromarray(arr, "RGBA"), "PNG")))
    assert pixel(out, 4, 0) == WHITE and pixel(out, 4, 7) == RED


def test_gray_with_alpha_into_one_channel(tmp_path):
    la = Image.new("LA", (8, 8), (0, 0))
    la.paste((0, 255), (4, 0, 8, 8))
    out = load(write(tmp_path, "la.png", encode(la, "PNG")), channels=1)
    assert out[0, 4, 0] == 255 and out[0, 4, 7] == 0


def test_grayscale_into_three_channels_is_replicated(tmp_path):
    gray = Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16), dtype=np.uint8))
    path = write(tmp_path, "gray.png", encode(gray, "PNG"))
    out = load(path, resolution=16)
    assert (out[0] == out[1]).all() and (out[1] == out[2]).all()
    np.testing.assert_array_equal(out[0], np.asarray(gray))


def test_rgb_into_one_channel_uses_luma(tmp_path):
    rgb = noise(16, 16)
    out = load(write(tmp_path, "rgb.png", encode(rgb, "PNG")), resolution=16, channels=1)
    np.testing.assert_array_equal(out[0], np.asarray(rgb.convert("L")))
    red = write(tmp_path, "red.png", encode(Image.new("RGB", (8, 8), RED), "PNG"))
    assert (load(red, channels=1) == 76).all()  # 0.299 * 255


def test_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = load(write(tmp_path, "anim.gif", data))
    assert {pixel(out, y, x) for y in range(8) for x in range(8)} == {RED}


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("L", (16, 8), 0)  # 16 wide, 8 tall: top half black, bottom half white
    stored.paste(255, (0, 4, 16, 8))
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise, so the black top ends up on the right
    path = write(tmp_path, "rot.jpg", encode(stored, "JPEG", exif=exif.tobytes(), quality=95))
    out = load(path, channels=1)[0]
    assert out[:, :3].mean() > 200 and out[:, 5:].mean() < 55  # ignoring the tag would give top/bottom halves


# ---- geometry ------------------------------------------------------------------------------------


def wide() -> Image.Image:
    """16 x 8: red left quarter, white middle half, blue right quarter."""
    img = Image.new("RGB", (16, 8), WHITE)
    img.paste(RED, (0, 0, 4, 8))
    img.paste(BLUE, (12, 0, 16, 8))
    return img


def test_center_crop_keeps_the_middle_square(tmp_path):
    out = load(write(tmp_path, "wide.png", encode(wide(), "PNG")), resolution=8, crop="center")
    assert (out == 255).all()


def test_pad_keeps_everything_on_black(tmp_path):
    out = load(write(tmp_path, "wide.png", encode(wide(), "PNG")), resolution=16, crop="pad")
    assert (out[:, :4] == 0).all() and (out[:, 12:] == 0).all()
    assert pixel(out, 8, 0) == RED and pixel(out, 8, 8) == WHITE and pixel(out, 8, 15) == BLUE


def test_resize_is_antialiased(tmp_path):
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)  # 1-px black/white checkerboard
    out = load(write(tmp_path, "board.png", encode(Image.fromarray(board), "PNG")), resolution=8, channels=1)
    assert abs(out.mean() - 127.5) < 5 and out.std() < 5  # an aliasing resizer gives 0s and 255s
