"""Naming what a component is: its shape, its colour, or the digits it spells.

* Shape: the component's coverage map is fingerprinted (``measure.fingerprint``: resampled to 16 x 16
  over its outline box plus a margin, zero-mean, unit norm) and compared by normalised correlation
  with every template of every shape (``templates.py``, several blur levels each); the best
  correlation names the shape, and a blob whose best correlation is under ``SHAPE_MIN_CORR`` is
  ``None`` (unrecognised, never counted). The fingerprint is taken over the outline box, so it is blind to
  the box's proportions; a shape is therefore also ``None`` when its box is stretched more than
  ``MAX_STRETCH`` times against the shape's own proportions (the world draws every shape unstretched, and a
  detector would not call a 12:1 bar a square; RL on one position prompt found rows of bars that passed).
* Colour: the median of the object's interior pixels, in CIELAB, nearest palette entry.
* Digits: the text is cut into glyphs where the font's geometry puts the gaps, and each glyph is
  fingerprinted and matched the same way against the 5 x 7 font.
"""

from __future__ import annotations

import numpy as np

from visalign.worlds.shapes import font
from visalign.worlds.shapes.geometry import unit_bbox
from visalign.worlds.shapes.measure import fingerprint, outline_box
from visalign.worlds.shapes.templates import DIGIT_RES, SHAPE_RES, digit_templates, shape_templates
from visalign.worlds.shapes.vocab import COLORS, SHAPES

SHAPE_MIN_CORR = 0.75  # below this correlation with every template, a blob is no known shape
DIGIT_MIN_CORR = 0.6  # same for a glyph
MAX_STRETCH = 2.5  # width:height of a shape's box against the shape's own, either way; beyond it, no shape


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (..., 3) to CIELAB (D65)."""
    c = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return np.stack(
        [116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], -1
    )


_COLOR_NAMES = tuple(COLORS)
_PALETTE_LAB = srgb_to_lab(np.array([COLORS[c] for c in _COLOR_NAMES], dtype=np.float64) / 255.0)


def color_name(rgb: np.ndarray) -> str:
    """Nearest palette colour (in CIELAB) of an sRGB triple in [0, 1]."""
    d = np.linalg.norm(_PALETTE_LAB - srgb_to_lab(np.asarray(rgb, dtype=np.float64)), axis=-1)
    return _COLOR_NAMES[int(np.argmin(d))]


def _best(vec: np.ndarray, templates: tuple[np.ndarray, np.ndarray]) -> tuple[int, float]:
    """(class index, correlation) of the template that correlates best with ``vec``."""
    corr = templates[0] @ vec
    k = int(np.argmax(corr))
    return int(templates[1][k]), float(corr[k])


def shape_of(
    alpha: np.ndarray, box: tuple[float, float, float, float] | None = None
) -> tuple[str | None, float]:
    """(shape name or None, best correlation) of a coverage map holding one object; ``box``: its outline box,
    when the caller has it already."""
    box = outline_box(alpha) if box is None else box
    k, corr = _best(fingerprint(alpha, SHAPE_RES, box=box), shape_templates())
    if corr < SHAPE_MIN_CORR or stretch(box, SHAPES[k]) > MAX_STRETCH:
        return None, corr
    return SHAPES[k], corr


def stretch(box: tuple[float, float, float, float], shape: str) -> float:
    """How many times an outline box's width:height differs from ``shape``'s own (>= 1, either way)."""
    x0, y0, x1, y1 = box
    ux0, uy0, ux1, uy1 = unit_bbox(shape)
    ratio = ((x1 - x0) / max(y1 - y0, 1e-6)) / ((ux1 - ux0) / (uy1 - uy0))
    return max(ratio, 1.0 / max(ratio, 1e-12))


def read_digits(alpha: np.ndarray) -> str:
    """The digit string in a coverage map (left to right); '?' for a glyph that matches no digit.

    Every glyph of the font fills its whole 5 x 7 cell and glyphs are ``font.GAP`` apart, so the text's
    outline alone says how many glyphs it holds: with font pixel s = height / 7, the width is
    n * 5s + (n - 1) * GAP * s. The text is cut at the emptiest column near each predicted gap and
    each piece is matched against the font. Unlike splitting at empty columns, this survives JPEG
    ringing and blur that fill the gaps between small glyphs.
    """
    if alpha.max() < 0.5:
        return ""
    x0, y0, x1, y1 = outline_box(alpha)
    if y1 - y0 < 1.0 or x1 - x0 < 1.0:
        # a mark thinner than a pixel (a collapsed policy draws lines whose profile touches 0.5 in one row) has
        # no glyph to read, and its zero height would divide by zero below
        return "?"
    s = (y1 - y0) / font.GLYPH_H
    pitch = (font.GLYPH_W + font.GAP) * s
    n = max(1, int(round((x1 - x0 + font.GAP * s) / pitch)))
    ink = alpha.sum(axis=0)
    cuts = [0]
    for k in range(1, n):
        centre = x0 + k * pitch - font.GAP * s / 2 - 0.5  # predicted gap centre, in pixel indices
        lo = max(int(np.floor(centre - 0.8 * s)), cuts[-1] + 1)
        hi = min(int(np.ceil(centre + 0.8 * s)) + 1, alpha.shape[1] - 1)
        cuts.append(lo + int(np.argmin(ink[lo:hi])) if hi > lo else lo)
    cuts.append(alpha.shape[1])
    out = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        part = alpha[:, a:b]
        if part.size == 0 or part.max() < 0.5:
            out.append("?")
            continue
        k, corr = _best(fingerprint(part, DIGIT_RES), digit_templates())
        out.append(font.DIGITS[k] if corr >= DIGIT_MIN_CORR else "?")
    return "".join(out)
