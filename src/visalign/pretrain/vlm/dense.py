"""Dense supervision of the vision tokens: every image patch is told what it shows.

The answer loss reaches the vision tower only through the language model, one answer token per question, and on
its own taught the tiny VLM colour but not shape (docs/models.md). ShapesWorld knows every pixel, so each 8 x 8
patch gets three labels from the scene: the class drawn over most of it (background, a shape, or a digit of a
number scene), that object's colour, and whether an object's centre lies in it (one mark per object, what
counting needs). A linear head on each merged token (the vectors the language model reads) predicts the labels
of its ``merge x merge`` patches; its cross-entropy, weighted by ``train.dense_weight``, is added to the answer
loss. The head exists only during training: the exported model is the stock Qwen2-VL class.

Patch order is Qwen2-VL's: the processor lays patches out merge window by merge window (row-major over the
windows, then row-major inside each), and the merger concatenates each window's patches into one token, so
token ``i`` covers window ``i`` and its labels are that window's patches in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from visalign.errors import UserError
from visalign.worlds.shapes.geometry import inside
from visalign.worlds.shapes.render import text_glyphs
from visalign.worlds.shapes.scene import Scene
from visalign.worlds.shapes.vocab import COLORS, SHAPES

CLASSES: tuple[str, ...] = ("background", *SHAPES, *(f"digit {d}" for d in "0123456789"))
COLOR_CLASSES: tuple[str, ...] = ("background", *COLORS)
MIN_COVER = 0.25  # a patch is labelled by an object that covers at least this share of it, else background


def pixel_labels(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel class and colour indices (``CLASSES`` / ``COLOR_CLASSES``), sampled at pixel centres; objects
    drawn later cover earlier ones, as in ``render.draw_scene``."""
    size = scene.size
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    cls = np.zeros((size, size), dtype=np.int64)
    col = np.zeros((size, size), dtype=np.int64)
    colors = list(COLORS)
    for obj in scene.objects:
        hit = inside(obj.shape, (xs - obj.cx) / obj.radius, (ys - obj.cy) / obj.radius)
        cls[hit] = CLASSES.index(obj.shape)
        col[hit] = 1 + colors.index(obj.color)
    text = scene.text
    if text is not None:
        index, inked = text_glyphs(text, xs, ys)  # the renderer's own glyph layout
        for k, ch in enumerate(text.text):
            hit = inked & (index == k)
            cls[hit] = CLASSES.index(f"digit {ch}")
            col[hit] = 1 + colors.index(text.color)
    return cls, col


def _majority(labels: np.ndarray, patch: int) -> np.ndarray:
    """The most common non-background label of each ``patch x patch`` block when it covers ``MIN_COVER``."""
    h, w = labels.shape[0] // patch, labels.shape[1] // patch
    blocks = labels[: h * patch, : w * patch].reshape(h, patch, w, patch).transpose(0, 2, 1, 3).reshape(h, w, -1)
    out = np.zeros((h, w), dtype=np.int64)
    for i in range(h):
        for j in range(w):
            values, counts = np.unique(blocks[i, j][blocks[i, j] > 0], return_counts=True)
            if len(values) and counts.max() >= MIN_COVER * patch * patch:
                out[i, j] = values[counts.argmax()]
    return out


def patch_targets(scene: Scene, patch: int, merge: int) -> torch.Tensor:
    """``[tokens, merge * merge, 3]`` labels (class, colour, centre 0/1) in Qwen2-VL's patch order."""
    if scene.size % (patch * merge):
        raise UserError(f"train.dense_weight: a {scene.size} px image is not a whole number of {patch * merge} px "
                        f"merge windows (patch {patch} x merge {merge})")
    cls, col = pixel_labels(scene)
    cls_p, col_p = _majority(cls, patch), _majority(col, patch)
    centre = np.zeros_like(cls_p)
    items = list(scene.objects) + ([scene.text] if scene.text is not None else [])
    for obj in items:
        i, j = min(int(obj.cy // patch), centre.shape[0] - 1), min(int(obj.cx // patch), centre.shape[1] - 1)
        centre[i, j] = 1
    grid = np.stack([cls_p, col_p, centre], axis=-1)  # [h, w, 3]
    h, w = grid.shape[0] // merge, grid.shape[1] // merge
    windows = grid.reshape(h, merge, w, merge, 3).transpose(0, 2, 1, 3, 4).reshape(h * w, merge * merge, 3)
    return torch.from_numpy(np.ascontiguousarray(windows))


class DenseHead(nn.Module):
    """A linear read-out of each merged token: logits of its patches' class, colour and centre mark."""

    def __init__(self, hidden_size: int, merge: int) -> None:
        super().__init__()
        self.patches = merge * merge
        self.sizes = (len(CLASSES), len(COLOR_CLASSES), 2)
        self.proj = nn.Linear(hidden_size, self.patches * sum(self.sizes))

    def loss(self, merged: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean of the three cross-entropies over all patches; ``merged`` is ``[tokens, hidden]``."""
        logits = self.proj(merged).view(merged.shape[0], self.patches, sum(self.sizes))
        parts = torch.split(logits, self.sizes, dim=-1)
        return sum(
            nn.functional.cross_entropy(part.reshape(-1, part.shape[-1]).float(), targets[..., k].reshape(-1))
            for k, part in enumerate(parts)
        ) / len(parts)


class MergedTokens:
    """Captures the vision tower's merged tokens (``pooler_output``) of each forward, for the dense loss."""

    def __init__(self, model: Any) -> None:
        self.value: torch.Tensor | None = None
        self.handle = model.model.visual.register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self.value = output.pooler_output

    def take(self) -> torch.Tensor:
        if self.value is None:
            raise RuntimeError("the vision tower did not run in this forward")
        value, self.value = self.value, None
        return value


def with_targets(items: Sequence[dict[str, Any]], examples: Sequence[Any], patch: int, merge: int) -> list[Any]:
    """``examples`` (encoded from ``items``) with each image's patch labels attached; one image, one tensor."""
    from dataclasses import replace

    from visalign.worlds.shapes.questions import question_scene

    cache: dict[tuple[Any, ...], torch.Tensor] = {}
    out = []
    for item, example in zip(items, examples, strict=True):
        image = item.get("image")
        if not isinstance(image, dict) or "metadata" not in image:
            raise UserError("train.dense_weight needs ShapesWorld questions, whose image is a scene (metadata and "
                            f"seed) that labels every patch; got an item whose image is {type(image).__name__}")
        key = (image["seed"], image["size"], image["metadata"].get("prompt"))
        if key not in cache:
            cache[key] = patch_targets(question_scene(item), patch, merge)
        patches = int(example.extra["image_grid_thw"].prod())
        if cache[key].shape[0] * merge * merge != patches:
            raise UserError(f"train.dense_weight: a {image['size']} px image is {patches} patches for the model but "
                            f"{cache[key].shape[0] * merge * merge} in its scene's labels; dense labels need images "
                            f"the processor keeps at their size (a multiple of patch x merge, within max_pixels)")
        out.append(replace(example, dense=cache[key]))
    return out
