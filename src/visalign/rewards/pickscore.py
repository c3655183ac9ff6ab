"""PickScore (Kirstain et al., 2023, "Pick-a-Pic: An Open Dataset of User Preferences for Text-to-Image Generation").

PickScore(image, prompt) = exp(logit_scale) * cos(E_image, E_text), the CLIP-H model fine-tuned on Pick-a-Pic
(``yuvalkirstain/PickScore_v1``) with the processor of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``.
Typical values are about 18-24; Flow-GRPO trains on PickScore / 26 (use a ``composite`` weight for that).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from visalign.rewards._clip_common import load_clip
from visalign.rewards.base import Reward, register_reward


@register_reward("pickscore")
class PickScore(Reward):
    """``checkpoint``: CLIP folder of the PickScore weights; ``processor``: folder with the processor/tokenizer."""

    name = "pickscore"
    summary = "PickScore: logit_scale*cos of the Pick-a-Pic CLIP-H"
    differentiable = True
    groupwise = False
    output_range = (-100.0, 100.0)  # logit_scale is clamped to <= 100 in CLIP

    def __init__(
        self,
        checkpoint: str = "yuvalkirstain/PickScore_v1",
        processor: str | None = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        tokenizer: str | None = None,
    ) -> None:
        self.encoder = load_clip(self.name, checkpoint, processor=processor, tokenizer=tokenizer)

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        cos = (self.encoder.image_features(images) * self.encoder.text_features(prompts)).sum(-1)
        return {self.name: self.encoder.logit_scale * cos}
