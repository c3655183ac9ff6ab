"""JPEG compressibility / incompressibility (Black et al., 2023, DDPO: "Training Diffusion Models with RL").

The image is encoded as JPEG at quality 95 (PIL, like ddpo-pytorch's ``jpeg_compressibility``) and the file
size is measured in kB (1 kB = 1000 bytes): compressibility = -size_kB, incompressibility = +size_kB.
Not differentiable.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from visalign.rewards._images import to_uint8
from visalign.rewards.base import Reward, register_reward

QUALITY = 95


def jpeg_size_kb(images: torch.Tensor, quality: int = QUALITY) -> torch.Tensor:
    """Size in kB of each ``[3, H, W]`` image of the batch saved as JPEG at ``quality``."""
    sizes = []
    for array in to_uint8(images):
        buffer = io.BytesIO()
        Image.fromarray(array, mode="RGB").save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float32)


@register_reward("jpeg_compressibility")
class JpegCompressibility(Reward):
    """Reward = -(JPEG size in kB at quality 95): smaller files score higher."""

    name = "jpeg_compressibility"
    summary = "minus JPEG size in kB at q95 (DDPO)"
    differentiable = False
    groupwise = False
    output_range = (float("-inf"), 0.0)
    sign = -1.0

    def __init__(self, quality: int = QUALITY) -> None:
        problem = next(self.option_problems({"quality": quality}), None)
        if problem is not None:
            raise ValueError(problem[1])
        self.quality = int(quality)

    @classmethod
    def option_problems(cls, options: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """PIL's JPEG quality scale is 0-100: found when a recipe loads (``rewards.base.reward_option_problems``)."""
        quality = options.get("quality", QUALITY)
        if isinstance(quality, int) and not 0 <= quality <= 100:
            yield "quality", f"reward '{cls.name}': quality must be from 0 to 100, got {quality}"

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        return {self.name: self.sign * jpeg_size_kb(images, self.quality)}


@register_reward("jpeg_incompressibility")
class JpegIncompressibility(JpegCompressibility):
    """Reward = +(JPEG size in kB at quality 95): larger files score higher."""

    name = "jpeg_incompressibility"
    summary = "JPEG size in kB at q95 (DDPO)"
    output_range = (0.0, float("inf"))
    sign = 1.0
