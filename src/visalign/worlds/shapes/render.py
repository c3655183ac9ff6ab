"""Anti-aliased rendering of ShapesWorld scenes into uint8 RGB arrays.

Each pixel's coverage is estimated with ``SUPERSAMPLE`` x ``SUPERSAMPLE`` sample points, and the
shape colour is blended over the background by that coverage: edges are soft like a generator's,
and the pixel values are a deterministic function of the scene (so of the seed).
"""

from __future__ import annotations

import math

import numpy as np

from visalign.seeding import numpy_rng
from visalign.worlds.shapes import font
from visalign.worlds.shapes.geometry import inside
from visalign.worlds.shapes.scene import Scene, SceneObject, TextItem, sample_scene
from visalign.worlds.shapes.vocab import BACKGROUND, COLORS

SUPERSAMPLE = 4


def _region(bbox: tuple[float, float, float, float], size: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = bbox
    return (
        max(int(math.floor(x0)), 0),
        max(int(math.floor(y0)), 0),
        min(int(math.ceil(x1)), size),
        min(int(math.ceil(y1)), size),
    )


def _sample_grid(px0: int, py0: int, px1: int, py1: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample-point coordinates (pixel units) for the pixels of a region, shape (H*S, W*S)."""
    k = SUPERSAMPLE
    xs = px0 + (np.arange((px1 - px0) * k) + 0.5) / k
    ys = py0 + (np.arange((py1 - py0) * k) + 0.5) / k
    return xs[None, :], ys[:, None]


def _pool(hits: np.ndarray) -> np.ndarray:
    k = SUPERSAMPLE
    h, w = hits.shape[0] // k, hits.shape[1] // k
    return hits.reshape(h, k, w, k).mean(axis=(1, 3))


def _object_coverage(obj: SceneObject, size: int) -> tuple[tuple[int, int, int, int], np.ndarray]:
    region = _region(obj.bbox(), size)
    xs, ys = _sample_grid(*region)
    hits = inside(obj.shape, (xs - obj.cx) / obj.radius, (ys - obj.cy) / obj.radius)
    return region, _pool(hits.astype(np.float32))


def text_glyphs(item: TextItem, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At image points (xs, ys), broadcast together: the index of the character of ``item.text`` whose cell holds
    the point, and whether the point is inked (a set pixel of that character's glyph)."""
    x0, y0 = item.bbox()[:2]
    u = (xs - x0) / item.scale  # font-pixel coordinates
    v = (ys - y0) / item.scale
    pitch = font.GLYPH_W + font.GAP
    index = np.floor(u / pitch).astype(int)
    col = np.floor(u - index * pitch).astype(int)
    row = np.floor(v).astype(int)
    u, v, index, col, row = np.broadcast_arrays(u, v, index, col, row)
    hits = np.zeros(u.shape, dtype=bool)
    valid = (row >= 0) & (row < font.GLYPH_H) & (col >= 0) & (col < font.GLYPH_W) & (index >= 0)
    valid &= index < len(item.text)
    for k, ch in enumerate(item.text):
        sel = valid & (index == k)
        hits[sel] = font.glyph(ch)[row[sel], col[sel]]
    return index, hits


def _text_coverage(item: TextItem, size: int) -> tuple[tuple[int, int, int, int], np.ndarray]:
    region = _region(item.bbox(), size)
    _index, hits = text_glyphs(item, *_sample_grid(*region))
    return region, _pool(hits.astype(np.float32))


def draw_scene(scene: Scene) -> np.ndarray:
    """Rasterise ``scene`` to a uint8 (size, size, 3) array."""
    size = scene.size
    canvas = np.empty((size, size, 3), dtype=np.float32)
    canvas[:] = np.asarray(BACKGROUND, dtype=np.float32)
    layers = [(_object_coverage(o, size), o.color) for o in scene.objects]
    if scene.text is not None:
        layers.append((_text_coverage(scene.text, size), scene.text.color))
    for ((x0, y0, x1, y1), alpha), color in layers:
        patch = canvas[y0:y1, x0:x1]
        a = alpha[: y1 - y0, : x1 - x0, None]
        patch[:] = patch * (1.0 - a) + np.asarray(COLORS[color], dtype=np.float32) * a
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render_scene(metadata: dict, seed: int, size: int = 64) -> np.ndarray:
    """A random scene satisfying ``metadata``, rendered as uint8 (size, size, 3); same seed, same image."""
    return draw_scene(sample_scene(metadata, numpy_rng(seed), size))
