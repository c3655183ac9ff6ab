"""Training batches rendered on the fly from ShapesWorld's train split.

Batch ``step`` of stage ``stage`` is a pure function of ``(seed, stage, step)``: which prompts, which scene
layouts and which prompts are dropped for classifier-free guidance. A resumed run therefore sees exactly
the batches an uninterrupted run would have seen, without storing any sampler state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

STAGE_IDS = {"vae": 1, "denoiser": 2, "stats": 3, "reflow": 4}


@dataclass
class Batch:
    """Images in [-1, 1] (``[B, 3, H, W]``), their prompts (``""`` where dropped) and metadata."""

    images: torch.Tensor
    prompts: list[str]
    metadata: list[dict]


class ShapesData:
    """Draws train-split metadata (optionally tag-balanced) and renders one random scene per item."""

    def __init__(
        self,
        seed: int,
        image_size: int = 64,
        tag_balanced: bool = True,
        split: str = "train",
        tags: list[str] | None = None,
    ):
        from visalign.worlds.shapes.prompts import load_split

        self.seed = seed
        self.image_size = image_size
        self.items = [m for m in load_split(split) if tags is None or m["tag"] in tags]
        if not self.items:
            raise ValueError(f"ShapesWorld {split} split has no items" + (f" with tags {tags}" if tags else ""))
        self.tag_balanced = tag_balanced
        tags = sorted({m["tag"] for m in self.items})
        self.by_tag = {t: [i for i, m in enumerate(self.items) if m["tag"] == t] for t in tags}

    def rng(self, stage: str, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, STAGE_IDS[stage], step])

    def draw(self, rng: np.random.Generator, size: int) -> list[dict]:
        """``size`` train items: a uniform tag, then a uniform item of that tag (or uniform items when not
        tag-balanced)."""
        if self.tag_balanced:
            tags = list(self.by_tag)
            picks = [self.by_tag[tags[rng.integers(len(tags))]] for _ in range(size)]
            index = [p[rng.integers(len(p))] for p in picks]
        else:
            index = list(rng.integers(len(self.items), size=size))
        return [self.items[i] for i in index]

    def batch(self, stage: str, step: int, size: int, prompt_dropout: float = 0.0) -> Batch:
        from visalign.worlds.shapes.render import render_scene

        rng = self.rng(stage, step)
        metadata = self.draw(rng, size)
        scene_seeds = rng.integers(2**31 - 1, size=size)
        drop = rng.random(size) < prompt_dropout
        images = np.stack(
            [
                render_scene(m, int(s), size=self.image_size)
                for m, s in zip(metadata, scene_seeds, strict=True)
            ]
        )
        tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        prompts = ["" if d else m["prompt"] for m, d in zip(metadata, drop, strict=True)]
        return Batch(images=tensor.contiguous(), prompts=prompts, metadata=metadata)
