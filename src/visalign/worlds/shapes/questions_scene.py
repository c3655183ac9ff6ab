"""The scene side of a question: metadata for a list of objects, the placed scene, referents, relations, boxes.

A question's scene is GenEval-style metadata in which every object's colour is named (so the metadata alone says
what is drawn) plus a render seed (which says where). ``sample_scene(metadata, numpy_rng(seed), size)`` places
the objects exactly as ``render_scene`` does, so answers computed here from the placed objects are the answers
of the rendered image.

Spatial answers must not hinge on a near-tie, so a relation question is only asked where the answer is clear:
"yes" when the relation holds with the margin the world places ``position`` prompts with (GenEval's rule at
threshold 0.25 and direction cut 0.7, against its 0.1 and 0.5), "no" when it fails even at threshold 0 and cut
0.3 (the offset points more than 72 degrees away from the asked direction). Layouts in between are not asked
about.
"""

from __future__ import annotations

import numpy as np

from visalign.seeding import numpy_rng
from visalign.worlds.shapes.phrasings import article
from visalign.worlds.shapes.relations import relations
from visalign.worlds.shapes.render import _object_coverage  # the renderer's own coverage of one object
from visalign.worlds.shapes.scene import Scene, SceneObject, sample_scene
from visalign.worlds.shapes.vocab import NUMBER_WORDS, PLURALS

SURE = {"threshold": 0.25, "cut": 0.7}  # a relation that holds this way is a clear "yes"
LOOSE = {"threshold": 0.0, "cut": 0.3}  # a relation that fails even this way is a clear "no"


def objects_metadata(objects: list[tuple[str, str]]) -> dict:
    """Metadata drawing exactly ``objects`` ((shape, colour) each): one include entry per distinct pair."""
    counts: dict[tuple[str, str], int] = {}
    for pair in objects:
        counts[pair] = counts.get(pair, 0) + 1
    include = [{"class": s, "count": n, "color": c} for (s, c), n in counts.items()]
    parts = [
        article(f"{c} {s}") if n == 1 else f"{NUMBER_WORDS[n]} {c} {PLURALS[s]}"
        for (s, c), n in counts.items()
    ]
    prompt = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return {"tag": "color_attr", "prompt": prompt, "include": include}


def text_metadata(number: str) -> dict:
    """Metadata of a scene that shows ``number`` (the world draws a number alone, in a random colour)."""
    return {"tag": "text", "prompt": f"the number {number}", "include": [], "text": number}


def place(metadata: dict, seed: int, size: int) -> Scene | None:
    """The scene ``render_scene(metadata, seed, size)`` draws, or None where the world cannot place it."""
    try:
        return sample_scene(metadata, numpy_rng(seed), size)
    except RuntimeError:
        return None


def matching(scene: Scene, shape: str | None = None, color: str | None = None) -> list[SceneObject]:
    """The objects of ``scene`` of that shape and colour (None: any)."""
    return [
        o
        for o in scene.objects
        if (shape is None or o.shape == shape) and (color is None or o.color == color)
    ]


def the(scene: Scene, shape: str | None = None, color: str | None = None) -> SceneObject | None:
    """The one object of ``scene`` that fits the description, or None if none or several do."""
    found = matching(scene, shape, color)
    return found[0] if len(found) == 1 else None


def clearly(a: SceneObject, relation: str, b: SceneObject) -> bool:
    """``a`` is ``relation`` ``b`` with the world's placement margin."""
    return relation in relations(a.bbox(), b.bbox(), **SURE)


def clearly_not(a: SceneObject, relation: str, b: SceneObject) -> bool:
    """``a`` is not ``relation`` ``b`` under even a loose reading."""
    return relation not in relations(a.bbox(), b.bbox(), **LOOSE)


def pixel_box(obj: SceneObject, size: int) -> list[int]:
    """The smallest whole-pixel box holding every pixel that ``obj`` covers by more than half, [x0, y0, x1, y1].

    Pixel-edge coordinates: origin at the image's top-left corner, x to the right, y down, x1 and y1 the far
    edges (the whole image is [0, 0, size, size]). Not the shape's geometric extent: the tips of a star or a
    triangle cover under half of their pixels for a pixel or two, and neither a viewer nor a detector sees them;
    a box over the visibly covered pixels is what both can reproduce (the verifier's detected boxes agree with it
    at IoU > 0.8, where they meet the geometric extent of stars at 0.55 to 0.7).
    """
    (x0, y0, _, _), coverage = _object_coverage(obj, size)
    ys, xs = np.nonzero(coverage > 0.5)
    return [x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1]
