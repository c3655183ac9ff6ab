"""Reference fingerprints of every shape and digit, at several blur levels.

Each template is made the way a real object is measured: a finely sampled silhouette is blurred
(Gaussian, ``sigma`` relative to the object size), normalised, outlined and fingerprinted with the
functions of ``measure.py``. Keeping several blur levels per class lets a nearest-template classifier
recognise a crisp 20 px square and a blurred 12 px one alike; blur changes how a shape looks far more
than noise or JPEG do.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from visalign.worlds.shapes import font
from visalign.worlds.shapes.geometry import coverage_map
from visalign.worlds.shapes.measure import fingerprint, normalise

SHAPE_RES = (16, 16)
DIGIT_RES = (21, 15)
# blur sigma / object radius: 64 px scenes have radii 5-15 px and an effective blur of 0.7-1.3 px
SHAPE_BLURS = (0.03, 0.08, 0.13, 0.19, 0.26)
# blur sigma / font pixel: font pixels are 2.2-5 px wide
DIGIT_BLURS = (0.12, 0.25, 0.4, 0.55)
_STEP = 0.025  # unit-frame units per sample of the fine shape maps
_DIGIT_UPSAMPLE = 20  # samples per font pixel of the fine glyph maps


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (sigma in samples), zero padding (the map's border is background)."""
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 0, image)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 1, out)


def _measure(fine: np.ndarray, res: tuple[int, int]) -> np.ndarray:
    return fingerprint(normalise(fine), res)


@cache
def shape_templates() -> tuple[np.ndarray, np.ndarray]:
    """(templates [n, d], class index [n]) for the shapes of ``vocab.SHAPES``."""
    from visalign.worlds.shapes.vocab import SHAPES

    vecs, cls = [], []
    for k, shape in enumerate(SHAPES):
        fine = coverage_map(shape, _STEP)
        for b in SHAPE_BLURS:
            vecs.append(_measure(_blur(fine, b / _STEP), SHAPE_RES))
            cls.append(k)
    return np.stack(vecs), np.array(cls)


@cache
def digit_templates() -> tuple[np.ndarray, np.ndarray]:
    """(templates [n, d], digit index into ``font.DIGITS`` [n])."""
    vecs, cls = [], []
    pad = 2 * _DIGIT_UPSAMPLE
    for k, d in enumerate(font.DIGITS):
        fine = np.kron(font.glyph(d), np.ones((_DIGIT_UPSAMPLE, _DIGIT_UPSAMPLE))).astype(np.float32)
        fine = np.pad(fine, pad)
        for b in DIGIT_BLURS:
            vecs.append(_measure(_blur(fine, b * _DIGIT_UPSAMPLE), DIGIT_RES))
            cls.append(k)
    return np.stack(vecs), np.array(cls)
