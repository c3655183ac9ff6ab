"""Reward-weighted regression (RWR), as used for text-to-image alignment by Lee et al., 2023, "Aligning
Text-to-Image Models using Human Feedback" (arXiv:2302.12192); RWR itself: Peters & Schaal, 2007.

Supervised fine-tuning on the policy's own final samples, each weighted by its exponentiated reward: x_0 is noised
with the forward process and the denoising / flow-matching loss of the sample is weighted by

    w_i = exp(R_i / T) / sum_j exp(R_j / T)          (normalised over the minibatch's trained samples)
    L   = sum_i w_i ||f_theta(x_t, t) - target_i||^2

with target eps - x_0 (flow) or eps / v (diffusion), ||.||^2 averaged over data dimensions. R is the run's
weighted reward (``weight_by: reward``) or the group advantage (``weight_by: advantage``); T the temperature
(T -> infinity: plain fine-tuning on the samples, T -> 0: only the best sample of the minibatch). Samples of
zero-variance groups are masked out like everywhere else; with several processes each normalises over its own
share of the minibatch.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from visalign.algorithms._forward_process import ForwardOptions, ForwardProcessAlgorithm, combined_reward
from visalign.algorithms.base import register_algorithm


def rwr_weights(signal: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax of signal / T over the samples in ``mask`` (zero elsewhere); sums to 1 unless nothing is trained."""
    logits = (signal.float() / temperature).masked_fill(~mask.bool(), float("-inf"))
    if not bool(mask.any()):
        return torch.zeros_like(logits)
    return torch.softmax(logits, dim=0)


@register_algorithm("rwr")
class RWR(ForwardProcessAlgorithm):
    paper = "Aligning Text-to-Image Models using Human Feedback (arXiv:2302.12192)"

    class Options(ForwardOptions):
        temperature: float = Field(1.0, gt=0.0)  # T of exp(R / T)
        weight_by: Literal["reward", "advantage"] = "reward"

    def loss(self, batch, generator):
        if self.options.weight_by == "reward":
            signal = combined_reward(batch.rewards, self.context)
        else:
            signal = batch.advantages
        weights = rwr_weights(signal.to(batch.mask.device), batch.mask, self.options.temperature)
        loss, metrics = self.weighted_regression(batch, generator, weights)
        metrics["rwr/weight_max"] = float(weights.max())
        metrics["rwr/ess"] = float(1.0 / (weights**2).sum().clamp_min(1e-12))  # effective sample size
        return loss, metrics
