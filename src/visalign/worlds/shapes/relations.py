"""GenEval's spatial relation rule, shared by the renderer (to place objects) and the verifier (to judge).

GenEval (``evaluate_images.py``, ``relative_position``) compares two bounding boxes A and B by their
centre offset ``o = c_A - c_B``. Each axis of the offset is shrunk towards zero by ``threshold`` times
the summed box sizes on that axis (a margin that forgives near-ties); the shrunk offset is divided by
``|o|``, and A is "left of" B when that normalised x component is below -0.5 ("right of" above +0.5;
"above" / "below" likewise on y, with y pointing down). A pair can hold two relations (e.g. left of
and above) or none (boxes nearly concentric).
"""

from __future__ import annotations

import numpy as np

POSITION_THRESHOLD = 0.1  # GenEval's value
DIRECTION_CUT = 0.5  # GenEval's value


def relations(
    box_a: tuple[float, float, float, float],
    box_b: tuple[float, float, float, float],
    threshold: float = POSITION_THRESHOLD,
    cut: float = DIRECTION_CUT,
) -> set[str]:
    """Relations that hold for A relative to B; boxes are (x0, y0, x1, y1) in pixels, y down."""
    a = np.asarray(box_a, dtype=np.float64).reshape(2, 2)
    b = np.asarray(box_b, dtype=np.float64).reshape(2, 2)
    offset = a.mean(axis=0) - b.mean(axis=0)
    dims = (a[1] - a[0]) + (b[1] - b[0])
    revised = np.maximum(np.abs(offset) - threshold * dims, 0.0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    found = set()
    if dx < -cut:
        found.add("left of")
    if dx > cut:
        found.add("right of")
    if dy < -cut:
        found.add("above")
    if dy > cut:
        found.add("below")
    return found
