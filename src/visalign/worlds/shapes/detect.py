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
    dist = seg.dist.ravel()
    min_core = MIN_CORE_64 * (h * w) / 4096.0
    for s, e in zip(starts, ends, strict=True):
        pix = idx[s:e]
        d = dist[pix]
        alpha = normalise(d)
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


def _detection(comp: _Component, image: np.ndarray) -> Detection:
    y0, x0 = int(comp.ys.min()), int(comp.xs.min())
    local = np.zeros((int(comp.ys.max()) - y0 + 1, int(comp.xs.max()) - x0 + 1), dtype=np.float32)
    local[comp.ys - y0, comp.xs - x0] = comp.alpha
    shape, match = shape_of(local)
    bx0, by0, bx1, by1 = outline_box(local)
    solid = comp.alpha >= 0.8
    if solid.sum() < 3:
        solid = comp.alpha > 0.5
    rgb = np.median(image[comp.ys[solid], comp.xs[solid]], axis=0)
    box = (x0 + bx0, y0 + by0, x0 + bx1, y0 + by1)
    return Detection(shape, color_name(rgb), box, comp.core, match)


def _text(comps: list[_Component]) -> str:
    if not comps:
        return ""
    ys = np.concatenate([c.ys for c in comps])
    xs = np.concatenate([c.xs for c in comps])
    alpha = np.concatenate([c.alpha for c in comps])
    y0, x0 = int(ys.min()), int(xs.min())
    local = np.zeros((int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1), dtype=np.float32)
    local[ys - y0, xs - x0] = alpha
    return read_digits(local)


def analyse(seg: Segmented, wants_text: list[bool]) -> list[list[Detection] | str]:
    """Per image of the batch: the digits it shows (where ``wants_text``), else its detections, largest first.

    Largest-first is the analogue of a detector's confidence order, which GenEval's rules rely on.
    """
    out: list[list[Detection] | str] = []
    for i, comps in enumerate(_components(seg)):
        if wants_text[i]:
            out.append(_text(comps))
        else:
            out.append(sorted((_detection(c, seg.image[i]) for c in comps), key=lambda d: -d.area))
    return out
