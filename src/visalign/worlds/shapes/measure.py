"""Measurements on coverage maps, shared by the verifier and the template builder.

A *coverage map* (``alpha``) is a 2-D array that is ~1 inside an object and 0 outside. Applying the
same functions to detected objects and to the reference templates is what keeps them comparable:
the templates are measured exactly the way an image is.
"""

from __future__ import annotations

import numpy as np

MARGIN = 0.25  # fingerprints look this far (in box sizes) beyond the outline box, to see the edges


def normalise(dist: np.ndarray) -> np.ndarray:
    """Coverage from distance-to-background: divide by the object's interior level and clip to [0, 1].

    The interior level is the median of the values above half the maximum: robust to JPEG ringing and
    noise (which inflate a maximum or a high percentile) and to blur (which lowers the plateau of
    thin parts but not the median of the bulk).
    """
    top = dist[dist >= 0.5 * float(dist.max())]
    level = max(float(np.median(top)), 1e-3)
    return np.minimum(dist / level, 1.0)


def _crossings(profile: np.ndarray, level: float = 0.5) -> tuple[float, float]:
    """Sub-pixel positions (pixel-edge coordinates) where a 1-D profile first and last reaches ``level``."""
    above = np.flatnonzero(profile >= level)
    i, j = int(above[0]), int(above[-1])
    lo = float(i)
    if i > 0:
        lo = i - 1 + (level - profile[i - 1]) / (profile[i] - profile[i - 1])
    hi = float(j)
    if j < profile.size - 1:
        hi = j + (profile[j] - level) / (profile[j] - profile[j + 1])
    return lo + 0.5, hi + 0.5


def outline_box(alpha: np.ndarray) -> tuple[float, float, float, float]:
    """Sub-pixel bounding box (x0, y0, x1, y1) of the 0.5 level of a coverage map.

    Interpolating the crossing instead of thresholding pixels keeps the box exact to a fraction of a
    pixel, which matters for 12 px objects whose edges fall anywhere between pixel centres.
    """
    x0, x1 = _crossings(alpha.max(axis=0))
    y0, y1 = _crossings(alpha.max(axis=1))
    return x0, y0, x1, y1


def resample(alpha: np.ndarray, box: tuple[float, float, float, float], out_h: int, out_w: int) -> np.ndarray:
    """Bilinear samples of ``alpha`` (zero outside) at the centres of an out_h x out_w grid over ``box``."""
    x0, y0, x1, y1 = box
    xs = x0 + (np.arange(out_w) + 0.5) * (x1 - x0) / out_w - 0.5
    ys = y0 + (np.arange(out_h) + 0.5) * (y1 - y0) / out_h - 0.5
    h, w = alpha.shape[0] + 2, alpha.shape[1] + 2
    p = np.zeros((h, w), dtype=alpha.dtype)  # zero border: samples outside the map read background
    p[1:-1, 1:-1] = alpha
    xs = np.clip(xs + 1, 0, w - 1.001)
    ys = np.clip(ys + 1, 0, h - 1.001)
    xi, yi = xs.astype(int), ys.astype(int)
    fx, fy = (xs - xi)[None, :], (ys - yi)[:, None]
    top = p[yi][:, xi] * (1 - fx) + p[yi][:, xi + 1] * fx
    bot = p[yi + 1][:, xi] * (1 - fx) + p[yi + 1][:, xi + 1] * fx
    return top * (1 - fy) + bot * fy


def fingerprint(
    alpha: np.ndarray,
    res: tuple[int, int],
    margin: float = MARGIN,
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """Zero-mean, unit-norm samples of ``alpha`` over its outline box grown by ``margin`` on each side.

    Normalising the vector makes the comparison (a dot product) indifferent to the object's contrast.
    ``box``: the outline box when the caller has it already.
    """
    x0, y0, x1, y1 = outline_box(alpha) if box is None else box
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    v = resample(alpha, (x0 - mx, y0 - my, x1 + mx, y1 + my), *res).ravel().astype(np.float64)
    v -= v.mean()
    return v / max(float(np.linalg.norm(v)), 1e-9)
