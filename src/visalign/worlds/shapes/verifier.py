"""The ShapesWorld verifier: does an image show what its GenEval-style metadata asks for?

``verify(image, metadata)`` returns a ``Verdict``: strict correctness (GenEval's rules, see
``rules.py``), a soft score in [0, 1] (partial credit, for RL rewards) and a readable reason.
``verify_batch`` segments same-size images together (one set of numpy passes for the whole batch),
which is what makes it fast; see ``segment.py``, ``detect.py`` and ``classify.py`` for the analysis.
Images may be PIL images, uint8 (H, W, 3) arrays, or float tensors (3, H, W) / (B, 3, H, W) in [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from visalign.worlds.shapes.detect import analyse
from visalign.worlds.shapes.inputs import as_image_list
from visalign.worlds.shapes.metadata import validate_metadata
from visalign.worlds.shapes.rules import judge_objects, judge_text
from visalign.worlds.shapes.segment import Segmented, segment

CHUNK = 256  # images segmented together (bounds peak memory)


@dataclass(frozen=True)
class Verdict:
    correct: bool
    score: float
    reason: str


def _is_text(md: dict) -> bool:
    return md.get("tag") == "text" or "text" in md


def checked_images(images: Any, metadatas: Sequence[dict]) -> list[np.ndarray]:
    """The images as arrays, once their metadata is validated (a ``UserError`` names the bad entry: an empty or
    misspelt requirement must never pass vacuously)."""
    arrays = as_image_list(images)
    if len(arrays) != len(metadatas):
        raise ValueError(f"{len(arrays)} images but {len(metadatas)} metadata entries")
    for i, md in enumerate(metadatas):
        validate_metadata(md, f"metadata[{i}]")
    return arrays


def segmented_chunks(arrays: Sequence[np.ndarray]) -> Iterator[tuple[list[int], Segmented]]:
    """Same-size images segmented together, ``CHUNK`` at a time: (their indices, their segmentation)."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, arr in enumerate(arrays):
        by_shape.setdefault(arr.shape, []).append(i)
    for members in by_shape.values():
        for start in range(0, len(members), CHUNK):
            chunk = members[start : start + CHUNK]
            yield chunk, segment(np.stack([arrays[i] for i in chunk]))


def chunk_verdicts(seg: Segmented, metadatas: Sequence[dict], components: Any = None) -> list[Verdict]:
    """The verdicts of a segmented chunk (``components``: its ``detect._components``, when already found)."""
    results = analyse(seg, [_is_text(md) for md in metadatas], components)
    return [Verdict(*judge_text(found, str(md["text"]))) if isinstance(found, str)
            else Verdict(*judge_objects(found, md)) for found, md in zip(results, metadatas, strict=True)]


def verify_batch(images: Any, metadatas: Sequence[dict]) -> list[Verdict]:
    """Verdicts for a batch of images against their metadata (one metadata per image), validated first."""
    arrays = checked_images(images, metadatas)
    verdicts: list[Verdict | None] = [None] * len(arrays)
    for chunk, seg in segmented_chunks(arrays):
        for i, verdict in zip(chunk, chunk_verdicts(seg, [metadatas[i] for i in chunk]), strict=True):
            verdicts[i] = verdict
    return [v for v in verdicts if v is not None]


def verify(image: Any, metadata: dict) -> Verdict:
    """The verdict for one image."""
    return verify_batch([image], [metadata])[0]
