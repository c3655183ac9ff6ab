"""Graded credit: the verifier's own measurements as a continuous score, for rewards that need a gradient.

The strict verdict and the soft score (``rules.py``) are step functions of the image: a blob whose template
correlation is 0.74 earns nothing for its shape, at 0.75 everything, so a policy gradient sees no slope until a
sample crosses a threshold. Here each requirement's credit follows the measurement that the verdict thresholds:

* **shape**: ``clip((corr - SHAPE_FLOOR) / (SHAPE_MIN_CORR - SHAPE_FLOOR), 0, 1)``, the correlation of the
  component with the asked shape's templates (the verifier accepts the best shape at corr >= SHAPE_MIN_CORR); half
  of it when the box is stretched beyond what the verifier accepts for that shape;
* **colour**: ``exp(-max(0, dE(asked) - dE(nearest)) / COLOR_SCALE)``, dE the CIELAB distance of the component's
  median colour to a palette colour: 1 when the asked colour is the nearest (what the verifier names), falling
  with how much farther it is;
* **count**: the n best components by (shape x colour) credit, each used by one requirement, their mean credit
  (missing objects count 0);
* **position**: per pair of chosen objects ``clip(v / DIRECTION_CUT, 0, 1)``, v the component of GenEval's shrunk,
  normalised centre offset along the asked direction (the relation holds at v > DIRECTION_CUT);
* **exclude** and **text**: the soft score's credits (``1 - excess / N``; ``1 - edit distance / length``).

``graded`` is the mean of the credits, and exactly 1 when the strict verdict is correct, below 1 otherwise: it
never ranks a wrong image above a right one, and the strict verdict stays the judge of every reported score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from visalign.worlds.shapes.classify import _PALETTE_LAB, MAX_STRETCH, SHAPE_MIN_CORR, srgb_to_lab, stretch
from visalign.worlds.shapes.detect import _components, _paint, component_rgb
from visalign.worlds.shapes.measure import fingerprint, outline_box
from visalign.worlds.shapes.relations import DIRECTION_CUT, POSITION_THRESHOLD
from visalign.worlds.shapes.templates import SHAPE_RES, shape_templates
from visalign.worlds.shapes.verifier import Verdict, checked_images, chunk_verdicts, segmented_chunks
from visalign.worlds.shapes.vocab import COLORS, SHAPES

SHAPE_FLOOR = 0.4  # template correlation that earns no shape credit (random blobs correlate about 0.3-0.5)
COLOR_SCALE = 10.0  # CIELAB units beyond the nearest palette colour that cost 1 / e of the colour credit
_COLOR_INDEX = {c: i for i, c in enumerate(COLORS)}
_DIRECTIONS = {"left of": (-1.0, 0.0), "right of": (1.0, 0.0), "above": (0.0, -1.0), "below": (0.0, 1.0)}


@dataclass(frozen=True)
class Measured:
    """One component: its outline box (pixels), core area, shape credit per shape and colour distances."""

    box: tuple[float, float, float, float]
    area: int
    shape_credit: dict[str, float]
    color_gap: np.ndarray  # dE to each palette colour minus dE to the nearest one (0 for the nearest)


def shape_credit(corr: float) -> float:
    return float(np.clip((corr - SHAPE_FLOOR) / (SHAPE_MIN_CORR - SHAPE_FLOOR), 0.0, 1.0))


def color_credit(gap: float) -> float:
    return math.exp(-max(0.0, gap) / COLOR_SCALE)


def relation_credit(box_a: Sequence[float], box_b: Sequence[float], relation: str) -> float:
    """How far A is ``relation`` B, in [0, 1]: 1 once GenEval's rule holds, 0 on the wrong side."""
    a = np.asarray(box_a, dtype=np.float64).reshape(2, 2)
    b = np.asarray(box_b, dtype=np.float64).reshape(2, 2)
    offset = a.mean(axis=0) - b.mean(axis=0)
    norm = float(np.linalg.norm(offset))
    if norm < 1e-9:
        return 0.0
    dims = (a[1] - a[0]) + (b[1] - b[0])
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * dims, 0.0) * np.sign(offset)
    v = float(np.dot(revised / norm, _DIRECTIONS[relation]))
    return float(np.clip(v / DIRECTION_CUT, 0.0, 1.0))


def _measure(comp: Any, image: np.ndarray) -> Measured:
    local, y0, x0 = _paint(comp.ys, comp.xs, comp.alpha)
    bx0, by0, bx1, by1 = outline = outline_box(local)
    templates, classes = shape_templates()
    corr = templates @ fingerprint(local, SHAPE_RES, box=outline)
    credits = {}
    for k, shape in enumerate(SHAPES):
        credit = shape_credit(float(corr[classes == k].max()))
        credits[shape] = credit * (0.5 if stretch(outline, shape) > MAX_STRETCH else 1.0)
    rgb = component_rgb(comp, image)  # the colour the verifier names
    dist = np.linalg.norm(_PALETTE_LAB - srgb_to_lab(np.asarray(rgb, dtype=np.float64)), axis=-1)
    return Measured((x0 + bx0, y0 + by0, x0 + bx1, y0 + by1), comp.core, credits, dist - dist.min())


def graded_objects(found: list[Measured], md: dict) -> float:
    """The mean credit of an object prompt's requirements (``include`` then ``exclude``)."""
    free = list(found)
    credits: list[float] = []
    chosen: list[list[Measured]] = []
    for req in md.get("include", []):
        cls, n, color = req["class"], int(req["count"]), req.get("color")

        def affinity(m: Measured, cls: str = cls, color: str | None = color) -> float:
            colour = color_credit(float(m.color_gap[_COLOR_INDEX[color]])) if color else 1.0
            return m.shape_credit[cls] * colour

        ranked = sorted(free, key=lambda m: (-affinity(m), -m.area))[:n]
        credits.append(sum(affinity(m) for m in ranked) / n)
        for m in ranked:
            free.remove(m)
        chosen.append(ranked)
        if req.get("position"):
            rel, j = req["position"]
            target = chosen[j] if j < len(chosen) else []
            pairs = [(o, t) for o in ranked for t in target]
            credits.append(sum(relation_credit(o.box, t.box, rel) for o, t in pairs) / len(pairs) if pairs else 0.0)
    for req in md.get("exclude", []):
        cls, limit = req["class"], int(req["count"])
        have = sum(m.shape_credit[cls] >= 1.0 for m in found)
        credits.append(max(0.0, 1.0 - max(0, have - limit + 1) / limit))
    return sum(credits) / max(len(credits), 1)


def graded_batch(images: Any, metadatas: Sequence[dict]) -> tuple[list[Verdict], list[float]]:
    """The verifier's verdicts and the graded score of each image (1 exactly when the verdict is correct), from one
    segmentation of the batch."""
    arrays = checked_images(images, metadatas)
    verdicts: list[Verdict] = [Verdict(False, 0.0, "")] * len(arrays)
    out = [0.0] * len(arrays)
    for chunk, seg in segmented_chunks(arrays):
        mds = [metadatas[i] for i in chunk]
        components = _components(seg)
        for k, (i, md, verdict) in enumerate(zip(chunk, mds, chunk_verdicts(seg, mds, components), strict=True)):
            verdicts[i] = verdict
            if verdict.correct or md.get("tag") == "text" or "text" in md:
                out[i] = 1.0 if verdict.correct else verdict.score  # a number keeps the edit-distance credit
            else:
                found = [_measure(c, seg.image[k]) for c in components[k]]
                out[i] = min(graded_objects(found, md), 1.0 - 1e-6)
    return verdicts, out
