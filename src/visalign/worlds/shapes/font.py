"""A 5 x 7 bitmap font for the digits 0-9.

Every glyph touches all four sides of its 5 x 7 cell (the "1" has a foot and a flag, the "7" a full
top bar), so a detected glyph normalised to its bounding box lines up with its template cell for
cell; that is what makes a nearest-template reader reliable after blur and noise.
"""

from __future__ import annotations

from functools import cache

import numpy as np

GLYPH_W, GLYPH_H = 5, 7
GAP = 2.0  # space between glyphs, in font pixels (wide enough that blur never bridges it)

_GLYPHS: dict[str, tuple[str, ...]] = {
    "0": (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    "1": ("..#..", ".##..", "#.#..", "..#..", "..#..", "..#..", "#####"),
    "2": (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    "3": ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    "4": ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    "5": ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    "6": ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    "7": ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    "8": (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    "9": (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}

DIGITS: tuple[str, ...] = tuple(sorted(_GLYPHS))


@cache
def glyph(digit: str) -> np.ndarray:
    """The glyph of ``digit`` as a boolean (7, 5) array."""
    return np.array([[c == "#" for c in row] for row in _GLYPHS[digit]], dtype=bool)


def text_width(text: str) -> float:
    """Width of ``text`` in font pixels."""
    return len(text) * GLYPH_W + (len(text) - 1) * GAP
