"""From segmented images to detections: one ``Detection`` per object, or the digits of a text image.

Each component is normalised by its own contrast (``measure.normalise``), which gives a coverage map ``alpha`` that is ~1 inside and falls to 0 across the edge
whatever the colour; its 0.5 level is the object's outline, and its bounding box is the object's box.
Specks are dropped: components whose core (alpha > 0.5) is under ``MIN_CORE_64`` pixels (at 64 px,
scaled by area) or under ``REL_CORE`` of the largest core in the image, the way a detector's
confidence threshold drops clutter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visalign.worlds.shapes.classify import color_name, read_digits, shape_of
from visalign.worlds.shapes.measure import normalise, outline_box
from visalign.worlds.shapes.segment import Segmented

MIN_CORE_64 = 10
REL_CORE = 0.08
MAX_COMPONENTS = 12  # a scene holds at most 5 objects; beyond 12 components an image is clutter (no detections)


@dataclass(frozen=True)
class Detection:
    """One object found in an image. ``shape`` is None for a blob that matches no shape."""

    shape: str | None
    color: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 of the outline, in pixel-edge coordinates
    area: int  # pixels with alpha > 0.5
    match: float  # correlation with the best template (1 = perfect)

    def describe(self) -> str:
        return f"{self.color} {self.shape or 'blob'}"


@dataclass
class _Component:
    ys: np.ndarray
    xs: np.ndarray
    alpha: np.ndarray  # coverage of each pixel
    core: int


def _largest(starts: np.ndarray, ends: np.ndarray, image_of: np.ndarray, min_size: float) -> tuple:
    """Keep components with at least ``min_size`` pixels; an image with more than ``MAX_COMPONENTS`` of them
    is clutter and keeps none.

    A scene of this world holds at most 5 objects (or a few digits), so a dozen object-sized components is no
    answer to any prompt; without this rule a generator can be rewarded for texture whose blobs happen to
    pass as shapes (RL finds that within 30 iterations). Done on sizes alone, before any per-component work,
    so that clutter (a noise image has hundreds of components) costs no more than a clean scene.
    """
    sizes = ends - starts
    keep = sizes >= min_size
    starts, ends = starts[keep], ends[keep]
    img = image_of[starts]
    per_image = np.bincount(img) if img.size else np.zeros(0, dtype=np.int64)
    clean = per_image[img] <= MAX_COMPONENTS
    return starts[clean], ends[clean]


def _components(seg: Segmented) -> list[list[_Component]]:
    """Per image, the components with their pixels and coverage (specks removed)."""
    b, h, w = seg.labels.shape
    flat = seg.labels.ravel()
    idx = np.flatnonzero(flat >= 0)
    out: list[list[_Component]] = [[] for _ in range(b)]
    if idx.size == 0:
        return out
    labs = flat[idx]
    order = np.argsort(labs, kind="stable")
    idx, labs = idx[order], labs[order]
    starts = np.flatnonzero(np.concatenate([[True], labs[1:] != labs[:-1]]))
    ends = np.append(starts[1:], labs.size)
    min_core = MIN_CORE_64 * (h * w) / 4096.0
    starts, ends = _largest(starts, ends, idx // (h * w), min_core)
    dist = seg.dist.ravel()
    for s, e in zip(starts, ends, strict=True):
        pix = idx[s:e]
        alpha = normalise(dist[pix])
        core = int((alpha > 0.5).sum())
        if core < min_core:
            continue
        rem = pix % (h * w)
        out[int(pix[0] // (h * w))].append(_Component(rem // w, rem % w, alpha, core))
    for comps in out:
        if comps:
            biggest = max(c.core for c in comps)
            comps[:] = [c for c in comps if c.core >= REL_CORE * biggest]
    return out


def _paint(ys: np.ndarray, xs: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The coverage of some pixels as a small dense map over their bounding box, and its origin (y0, x0)."""
    y0, x0 = int(ys.min()), int(xs.min())
    local = np.zeros((int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1), dtype=np.float32)
    local[ys - y0, xs - x0] = alpha
    return local, y0, x0


def _detection(comp: _Component, image: np.ndarray) -> Detection:
    local, y0, x0 = _paint(comp.ys, comp.xs, comp.alpha)
    bx0, by0, bx1, by1 = outline = outline_box(local)
    shape, match = shape_of(local, outline)
    box = (x0 + bx0, y0 + by0, x0 + bx1, y0 + by1)
    return Detection(shape, color_name(component_rgb(comp, image)), box, comp.core, match)


def component_rgb(comp: _Component, image: np.ndarray) -> np.ndarray:
    """A component's colour: the median of its solid pixels (coverage >= 0.8; > 0.5 when fewer than 3 are)."""
    solid = comp.alpha >= 0.8
    if solid.sum() < 3:
        solid = comp.alpha > 0.5
    return np.median(image[comp.ys[solid], comp.xs[solid]], axis=0)


def _text(comps: list[_Component]) -> str:
    """The digits shown by all the components of an image taken together."""
    if not comps:
        return ""
    local, _, _ = _paint(*(np.concatenate([getattr(c, k) for c in comps]) for k in ("ys", "xs", "alpha")))
    return read_digits(local)


def analyse(seg: Segmented, wants_text: list[bool], components: list[list[_Component]] | None = None
            ) -> list[list[Detection] | str]:
    """Per image of the batch: the digits it shows (where ``wants_text``), else its detections, largest first
    (``components``: ``_components(seg)``, when the caller has it already).

    Largest-first is the analogue of a detector's confidence order, which GenEval's rules rely on.
    """
    out: list[list[Detection] | str] = []
    for i, comps in enumerate(_components(seg) if components is None else components):
        if wants_text[i]:
            out.append(_text(comps))
        else:
            out.append(sorted((_detection(c, seg.image[i]) for c in comps), key=lambda d: -d.area))
    return out
