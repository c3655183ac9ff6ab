"""HPSv2 and HPSv2.1 (Wu et al., 2023, "Human Preference Score v2").

The released checkpoints ``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt`` (hub repo ``xswu/HPSv2``) hold
an open_clip ViT-H-14 state dict (under ``"state_dict"``). The score is the cosine similarity of the
normalised image and text embeddings, ``image_features @ text_features.T`` on the diagonal (no logit scale),
typically 0.2-0.35. The state dict is converted at load time into a transformers ``CLIPModel``
(``_openclip_convert``); the tokenizer is OpenAI's CLIP BPE (any CLIP tokenizer folder, e.g.
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``). Images: resize 224 bicubic, center crop, OpenAI mean/std.
Differentiable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from visalign.rewards._clip_common import ClipEncoder, ImageTransform, load_clip_tokenizer
from visalign.rewards._loading import load_state_dict, resolve_file
from visalign.rewards._openclip_convert import convert_openclip_state_dict
from visalign.rewards.base import Reward, register_reward


class _HPS(Reward):
    differentiable = True
    groupwise = False
    output_range = (-1.0, 1.0)
    filename: ClassVar[str] = ""

    def __init__(
        self,
        checkpoint: str = "xswu/HPSv2",
        tokenizer: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        vision_heads: int | None = None,
        text_heads: int | None = None,
    ) -> None:
        path = resolve_file(self.name, checkpoint, self.filename)
        state = load_state_dict(self.name, path)
        vocab = state.get("token_embedding.weight")
        tok = load_clip_tokenizer(self.name, tokenizer, None if vocab is None else int(vocab.shape[0]))
        model = convert_openclip_state_dict(
            self.name, path, state, vision_heads=vision_heads, text_heads=text_heads, eos_token_id=tok.eos_token_id
        )
        size = int(model.config.vision_config.image_size)
        self.encoder = ClipEncoder(model, tok, ImageTransform(size, size))

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        cos = (self.encoder.image_features(images) * self.encoder.text_features(prompts)).sum(-1)
        return {self.name: cos}


@register_reward("hpsv2")
class HPSv2(_HPS):
    """HPSv2 (``HPS_v2_compressed.pt``)."""

    name = "hpsv2"
    summary = "HPSv2 human preference: cosine of ViT-H-14 embeddings"
    filename = "HPS_v2_compressed.pt"


@register_reward("hpsv2.1")
class HPSv21(_HPS):
    """HPSv2.1 (``HPS_v2.1_compressed.pt``)."""

    name = "hpsv2.1"
    summary = "HPSv2.1 human preference: cosine of ViT-H-14 embeddings"
    filename = "HPS_v2.1_compressed.pt"
