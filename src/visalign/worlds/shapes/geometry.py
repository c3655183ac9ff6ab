"""Shape silhouettes as coverage functions in a unit frame, shared by the renderer and the verifier.

A shape lives in the square [-1, 1] x [-1, 1] (y points down, as in images) and is upright: there
is no rotation in ShapesWorld, so a silhouette normalised to its own bounding box is a reliable
fingerprint. ``inside(shape, x, y)`` answers point membership for arrays of points; the renderer
supersamples it for anti-aliasing and the verifier rasterises it once into templates
(``coverage_map``).
"""

from __future__ import annotations

import math

import numpy as np


def _star_polygon(points: int = 5, inner: float = 0.4) -> np.ndarray:
    """Vertices of an upright star (first spike pointing up)."""
    verts = []
    for k in range(2 * points):
        radius = 1.0 if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / points
        verts.append((radius * math.cos(angle), radius * math.sin(angle)))
    return np.array(verts)


POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]),
    "triangle": np.array([(0.0, -0.9), (1.0, 0.85), (-1.0, 0.85)]),
    "star": _star_polygon(),
}

CROSS_HALF_WIDTH = 0.34  # half-width of a cross arm, in unit-frame coordinates


def _inside_polygon(poly: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd ray casting, vectorised over the points."""
    inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1, strict=True):
        if ay == by:
            continue
        crosses = (ay > y) != (by > y)
        x_at = ax + (y - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (x < x_at)
    return inside


def inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean membership of unit-frame points (x, y) in ``shape``."""
    if shape == "circle":
        return x * x + y * y <= 1.0
    if shape == "cross":
        ax, ay = np.abs(x), np.abs(y)
        return ((ax <= CROSS_HALF_WIDTH) & (ay <= 1.0)) | ((ay <= CROSS_HALF_WIDTH) & (ax <= 1.0))
    if shape in POLYGONS:
        return _inside_polygon(POLYGONS[shape], x, y)
    raise KeyError(f"unknown shape '{shape}'")


def unit_bbox(shape: str) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the shape in the unit frame."""
    if shape in POLYGONS:
        p = POLYGONS[shape]
        return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())
    return (-1.0, -1.0, 1.0, 1.0)


def coverage_map(shape: str, step: float = 0.025, pad: float = 0.6) -> np.ndarray:
    """Binary coverage of ``shape`` on a fine grid (``step`` unit-frame units per cell) over [-1-pad, 1+pad]^2."""
    n = int(round(2 * (1 + pad) / step))
    c = -1 - pad + (np.arange(n) + 0.5) * step
    return inside(shape, c[None, :], c[:, None]).astype(np.float32)
