"""Training batches rendered on the fly from ShapesWorld's train split.

Batch ``step`` of stage ``stage`` is a pure function of ``(seed, stage, step)``: which prompts, which scene
layouts and which prompts are dropped for classifier-free guidance. A resumed run therefore sees exactly
the batches an uninterrupted run would have seen, without storing any sampler state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from visalign.seeding import numpy_rng

if TYPE_CHECKING:
    from visalign.pretrain.config import PretrainConfig

STAGE_IDS = {"vae": 1, "denoiser": 2, "stats": 3, "reflow": 4, "vlm": 5}


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
        tag_weights: dict[str, float] | None = None,
        text_length_balanced: bool = False,
        text_lengths: list[int] | None = None,
    ):
        from visalign.worlds.shapes.prompts import load_split

        self.seed = seed
        self.image_size = image_size
        self.items = [
            m
            for m in load_split(split)
            if (tags is None or m["tag"] in tags)
            and (text_lengths is None or m["tag"] != "text" or len(m["text"]) in text_lengths)
        ]
        if not self.items:
            raise ValueError(f"ShapesWorld {split} split has no items" + (f" with tags {tags}" if tags else ""))
        self.tag_balanced = tag_balanced
        tags = sorted({m["tag"] for m in self.items})
        self.by_tag = {t: [i for i, m in enumerate(self.items) if m["tag"] == t] for t in tags}
        self.tag_odds = None
        if tag_weights is not None:
            odds = np.array([tag_weights.get(t, 1.0) for t in self.by_tag], dtype=float)
            self.tag_odds = odds / odds.sum()
        self.text_by_length: list[list[int]] | None = None
        if text_length_balanced and "text" in self.by_tag:
            lengths = sorted({len(self.items[i]["text"]) for i in self.by_tag["text"]})
            self.text_by_length = [
                [i for i in self.by_tag["text"] if len(self.items[i]["text"]) == n] for n in lengths
            ]

    def rng(self, stage: str, step: int) -> np.random.Generator:
        return numpy_rng(self.seed, STAGE_IDS[stage], step)

    def _pick_tag(self, rng: np.random.Generator) -> str:
        tags = list(self.by_tag)
        if self.tag_odds is None:
            return tags[rng.integers(len(tags))]
        return tags[rng.choice(len(tags), p=self.tag_odds)]

    def _pool(self, tag: str, rng: np.random.Generator) -> list[int]:
        if tag == "text" and self.text_by_length is not None:
            return self.text_by_length[rng.integers(len(self.text_by_length))]
        return self.by_tag[tag]

    def draw(self, rng: np.random.Generator, size: int) -> list[dict]:
        """``size`` train items: a tag (uniform, or by ``tag_weights``), then a uniform item of that tag (for
        text, optionally a uniform number length first); uniform items when not tag-balanced."""
        if self.tag_balanced:
            picks = [self._pool(self._pick_tag(rng), rng) for _ in range(size)]
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


def stage_data(cfg: PretrainConfig, mixture: bool) -> ShapesData:
    """The train-split scene stream; ``mixture`` applies ``train.tag_weights`` / ``train.text_lengths``."""
    return ShapesData(
        cfg.seed,
        cfg.image_size,
        tag_balanced=cfg.train.tag_balanced,
        tags=cfg.train.tags,
        tag_weights=cfg.train.tag_weights if mixture else None,
        text_length_balanced=cfg.train.text_length_balanced,
        text_lengths=cfg.train.text_lengths if mixture else None,
    )
