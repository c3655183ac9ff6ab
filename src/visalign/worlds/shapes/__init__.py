"""ShapesWorld: the embedded verifiable world (vocabulary, prompts, renderer, verifier).

The submodules are imported on use; ``contact_sheet`` is re-exported here for convenience.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image


def contact_sheet(images: Sequence[Any], labels: Sequence[str] | None = None, ncols: int = 10) -> Image.Image:
    """A grid of ShapesWorld images (enlarged to ~128 px per cell), optionally captioned by prompt."""
    from visalign.report.grid import make_grid, to_pil

    first = to_pil(images[0]) if images else None
    scale = max(1, 128 // max(first.size)) if first is not None else 1
    return make_grid(images, labels, ncols=min(ncols, max(len(images), 1)), scale=scale)
