"""Scene descriptions and the random placement of objects that satisfy a prompt's metadata.

A ``Scene`` is a plain list of objects (shape, colour, centre, radius in pixels) or one number
written in the bitmap font. ``sample_scene`` draws a scene that satisfies GenEval-style metadata:
exactly the requested objects (so counts are exact), random colours where none is requested,
random sizes and positions, no two objects closer than a gap that survives blur, and every
``position`` relation holding with a safety margin beyond GenEval's own rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visalign.worlds.shapes import font
from visalign.worlds.shapes.geometry import unit_bbox
from visalign.worlds.shapes.relations import relations
from visalign.worlds.shapes.vocab import COLORS, MAX_OBJECTS

_COLOR_NAMES = tuple(COLORS)

# Object radius range (pixels at 64 px) by number of objects in the scene: fewer objects, larger ones.
_RADIUS_64: dict[int, tuple[float, float]] = {
    1: (9.0, 15.0),
    2: (7.5, 12.0),
    3: (7.0, 10.0),
    4: (6.5, 9.0),
    5: (6.5, 8.0),
}
_GAP_64 = 5.0  # minimum free space between two bounding boxes (pixels at 64 px)
_MARGIN_64 = 2.0  # minimum free space between a bounding box and the image border


@dataclass(frozen=True)
class SceneObject:
    """One shape: ``radius`` is the half-size of the shape's unit frame, in pixels."""

    shape: str
    color: str
    cx: float
    cy: float
    radius: float

    def bbox(self) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = unit_bbox(self.shape)
        r = self.radius
        return (self.cx + r * x0, self.cy + r * y0, self.cx + r * x1, self.cy + r * y1)


@dataclass(frozen=True)
class TextItem:
    """A number in the bitmap font; ``scale`` is the size of one font pixel, in image pixels."""

    text: str
    color: str
    cx: float
    cy: float
    scale: float

    def bbox(self) -> tuple[float, float, float, float]:
        w = font.text_width(self.text) * self.scale
        h = font.GLYPH_H * self.scale
        return (self.cx - w / 2, self.cy - h / 2, self.cx + w / 2, self.cy + h / 2)


@dataclass(frozen=True)
class Scene:
    """What to draw on a ``size`` x ``size`` canvas: objects, or one number."""

    size: int
    objects: tuple[SceneObject, ...] = ()
    text: TextItem | None = None


def _boxes_apart(a: tuple[float, ...], b: tuple[float, ...], gap: float) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _object_specs(metadata: dict, rng: np.random.Generator) -> tuple[list[tuple[str, str]], list[int]]:
    """(shape, colour) for every object to draw, and the include index each one came from."""
    specs, group = [], []
    for i, req in enumerate(metadata.get("include", [])):
        for _ in range(int(req["count"])):
            color = req.get("color") or _COLOR_NAMES[int(rng.integers(len(_COLOR_NAMES)))]
            specs.append((req["class"], color))
            group.append(i)
    return specs, group


def _relations_hold(metadata: dict, objects: list[SceneObject], group: list[int]) -> bool:
    """Every requested relation holds with a wide margin (so blur and box jitter cannot flip it)."""
    includes = metadata.get("include", [])
    for i, req in enumerate(includes):
        if not req.get("position"):
            continue
        rel, j = req["position"]
        for a in (o for o, g in zip(objects, group, strict=True) if g == i):
            for b in (o for o, g in zip(objects, group, strict=True) if g == j):
                if rel not in relations(a.bbox(), b.bbox(), threshold=0.25, cut=0.7):
                    return False
    return True


def sample_scene(metadata: dict, rng: np.random.Generator, size: int = 64) -> Scene:
    """Draw a random scene that satisfies ``metadata`` (objects exactly as included, or the number)."""
    if metadata.get("tag") == "text" or "text" in metadata:
        return _sample_text(str(metadata["text"]), rng, size)
    specs, group = _object_specs(metadata, rng)
    n = len(specs)
    if not 1 <= n <= MAX_OBJECTS:
        raise ValueError(f"a scene holds 1 to {MAX_OBJECTS} objects, metadata asks for {n}")
    lo, hi = _RADIUS_64[n]
    shrink = 1.0
    for attempt in range(400):
        if attempt and attempt % 50 == 0:
            shrink = max(shrink * 0.93, 0.7)
        objects: list[SceneObject] = []
        for shape, color in specs:
            obj = _place(shape, color, objects, rng, size, (lo * shrink, hi * shrink))
            if obj is None:
                break
            objects.append(obj)
        if len(objects) == n and _relations_hold(metadata, objects, group):
            return Scene(size=size, objects=tuple(objects))
    raise RuntimeError(f"could not place the objects of {metadata.get('prompt', metadata)!r}")


def _place(
    shape: str,
    color: str,
    placed: list[SceneObject],
    rng: np.random.Generator,
    size: int,
    radius_range: tuple[float, float],
) -> SceneObject | None:
    """A random placement of one object clear of the border and of ``placed``, or None after 40 tries."""
    s = size / 64.0
    margin = _MARGIN_64 * s
    x0, y0, x1, y1 = unit_bbox(shape)
    for _ in range(40):
        radius = rng.uniform(*radius_range) * s
        cx = rng.uniform(margin - radius * x0, size - margin - radius * x1)
        cy = rng.uniform(margin - radius * y0, size - margin - radius * y1)
        obj = SceneObject(shape, color, float(cx), float(cy), float(radius))
        if all(_boxes_apart(obj.bbox(), o.bbox(), _GAP_64 * s) for o in placed):
            return obj
    return None


def _sample_text(text: str, rng: np.random.Generator, size: int) -> Scene:
    max_scale = min(0.86 * size / font.text_width(text), 0.55 * size / font.GLYPH_H)
    scale = rng.uniform(0.75, 1.0) * max_scale
    w, h = font.text_width(text) * scale, font.GLYPH_H * scale
    margin = _MARGIN_64 * size / 64.0
    cx = rng.uniform(margin + w / 2, size - margin - w / 2)
    cy = rng.uniform(margin + h / 2, size - margin - h / 2)
    color = _COLOR_NAMES[int(rng.integers(len(_COLOR_NAMES)))]
    return Scene(size=size, text=TextItem(text, color, float(cx), float(cy), float(scale)))
