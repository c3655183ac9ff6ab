"""CLIPScore (Hessel et al., 2021, "CLIPScore: A Reference-free Evaluation Metric for Image Captioning").

CLIPScore(image, prompt) = w * max(cos(E_image, E_text), 0) with w = 2.5, computed with a transformers CLIP
folder (the paper used OpenAI's ViT-B/32: ``openai/clip-vit-base-patch32``). Differentiable: the image is
resized and normalised in torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from visalign.rewards._clip_common import load_clip
from visalign.rewards.base import Reward, register_reward


@register_reward("clipscore")
class CLIPScore(Reward):
    """``w * max(cos, 0)``; ``checkpoint``: a transformers CLIP folder or hub id (offline cache)."""

    name = "clipscore"
    summary = "CLIPScore 2.5*max(cos,0) (Hessel et al. 2021)"
    differentiable = True
    groupwise = False
    output_range = (0.0, 2.5)

    def __init__(
        self, checkpoint: str = "openai/clip-vit-base-patch32", tokenizer: str | None = None, w: float = 2.5
    ) -> None:
        self.encoder = load_clip(self.name, checkpoint, tokenizer=tokenizer)
        self.w = float(w)

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        cos = (self.encoder.image_features(images) * self.encoder.text_features(prompts)).sum(-1)
        return {self.name: self.w * cos.clamp(min=0)}
