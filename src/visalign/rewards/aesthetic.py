"""LAION aesthetic predictor (Schuhmann, "improved-aesthetic-predictor", 2022).

score = MLP(normalize(CLIP ViT-L/14 image embedding)), the MLP of ``sac+logos+ava1-l14-linearMSE.pth``:
``layers`` = Linear(768, 1024), Dropout, Linear(1024, 128), Dropout, Linear(128, 64), Dropout,
Linear(64, 16), Linear(16, 1) (state-dict keys ``layers.{0,2,4,6,7}.{weight,bias}``; no activations).
Scores are roughly on a 1-10 scale. DDPO and AlignProp train on it. Differentiable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visalign.errors import UserError
from visalign.rewards._clip_common import load_clip
from visalign.rewards._loading import freeze, load_state_dict, require_keys, resolve_file, state_dict_mismatch
from visalign.rewards.base import Reward, register_reward

HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
HEAD_KEYS = [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")]


class AestheticMLP(nn.Module):
    """The improved-aesthetic-predictor head (also ImageReward's ``mlp``); dropouts are inactive in eval mode."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_features = in_dim
        self.layers = nn.Sequential(
            nn.Linear(in_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_aesthetic_head(reward: str, path: Path) -> AestheticMLP:
    state = load_state_dict(reward, path)
    require_keys(reward, path, state, HEAD_KEYS)
    head = AestheticMLP(state["layers.0.weight"].shape[1])
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"reward '{reward}': {path} does not match the aesthetic MLP: {state_dict_mismatch(err)}") from None
    return freeze(head.float())


@register_reward("aesthetic")
class LaionAesthetic(Reward):
    """``clip``: CLIP ViT-L/14 folder or hub id; ``head``: the ``.pth`` file, or a folder / hub repo holding it."""

    name = "aesthetic"
    summary = "LAION aesthetic predictor: MLP on CLIP ViT-L/14 image embedding (~1-10)"
    differentiable = True
    groupwise = False
    output_range = (float("-inf"), float("inf"))

    def __init__(self, head: str | None = None, clip: str = "openai/clip-vit-large-patch14") -> None:
        if head is None:
            raise UserError(
                f"reward 'aesthetic': pass head=PATH to {HEAD_FILE} "
                "(github.com/christophschuhmann/improved-aesthetic-predictor)"
            )
        self.encoder = load_clip(self.name, clip, need_text=False)
        self.head = load_aesthetic_head(self.name, resolve_file(self.name, head, HEAD_FILE))
        dim = int(self.encoder.model.config.projection_dim)
        if self.head.in_features != dim:
            raise UserError(
                f"reward 'aesthetic': head expects {self.head.in_features}-d embeddings, CLIP gives {dim}"
            )

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        features = self.encoder.image_features(images)
        self.head.to(features.device)
        return {self.name: self.head(features).squeeze(-1)}
