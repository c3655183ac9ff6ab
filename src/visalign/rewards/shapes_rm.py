"""``shapes_rm``: the learned, differentiable ShapesWorld reward model.

A small prompt-conditioned CNN (``shapes_rm_model.ShapesRM``) trained to predict the ShapesWorld verifier's
soft score from (image, prompt) pairs (``visalign rewards train-shapes-rm``, ``shapes_rm_train/``). The
shipped weights live in ``visalign/assets/shapes-rm/`` with a card (``README.md``) that reports the
agreement with the verifier on held-out generated images.

* main score ``shapes_rm``: sigmoid of the soft logit, in [0, 1], differentiable in the images;
* component ``shapes_rm_strict``: predicted probability that the verifier's strict verdict is correct.

The verifier is the ground truth: reward back-propagation methods (ReFL, DRaFT, AlignProp) optimise this
model; evaluate what they achieved with ``shapes_soft`` / ``shapes_strict``. Only the prompt strings are
read (metadata is ignored); a prompt with a word outside the ShapesWorld vocabulary is a ``UserError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from visalign.rewards.base import Reward, register_reward

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "assets" / "shapes-rm"


@register_reward("shapes_rm")
class ShapesRMReward(Reward):
    """The learned ShapesWorld reward (``path``: a folder from ``train-shapes-rm``; default: the shipped one)."""

    name = "shapes_rm"
    summary = "learned ShapesWorld reward model (predicts the verifier's soft score), differentiable"
    differentiable = True
    groupwise = False
    output_range = (0.0, 1.0)

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        from visalign.rewards.shapes_rm_model import load_rm

        self.path = Path(path) if path is not None else DEFAULT_PATH
        self.model = load_rm(self.path, device=device)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def score(
        self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        device = self.model.embed.weight.device
        out = self.model(images.to(device), list(prompts))
        return {
            self.name: torch.sigmoid(out["soft"]).to(images.device),
            "shapes_rm_strict": torch.sigmoid(out["strict"]).to(images.device),
        }
