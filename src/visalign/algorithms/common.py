"""Pieces shared by several algorithms, written once.

* ``ppo_clip``: L = max(-A rho, -A clip(rho, 1 - eps, 1 + eps)) per sample (Schulman et al., 2017).
* ``gaussian_mean_kl``: KL between two Gaussians with the same std, mean_d (mu - mu_ref)^2 / (2 std^2).
* ``kl_estimate``: Schulman's k1 / k2 / k3 estimators of KL(p || ref) from log-probs of samples of p.
* ``flow_matching_loss``: mean_d w (v_theta - (eps - x_0))^2.
* ``replay_step``: recompute a stored step's mean / std / log-prob under the current (or reference) policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from visalign.sampling.base import mean_over_data

if TYPE_CHECKING:
    from visalign.models.base import Generator
    from visalign.rollout import StepBatch


def ppo_clip(
    advantages: torch.Tensor, log_ratio: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample PPO-clip loss and the ratio, both ``[B]``."""
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped), ratio


def gaussian_mean_kl(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(mean_ref, std^2)) averaged over data dims, ``[B]``; ``std`` is ``[B]``."""
    return mean_over_data((mean.float() - mean_ref.float()) ** 2) / (2 * std.float() ** 2)


def kl_estimate(log_p: torch.Tensor, log_ref: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Estimators of KL(p || ref) from samples of p: k1 = log p/ref, k2 = (log p/ref)^2 / 2, k3 = (r - 1) - log r
    with r = ref / p. k1 is unbiased, k3 unbiased and non-negative, k2 biased with low variance."""
    log_r = log_ref - log_p
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    if kind == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator '{kind}' (k1, k2, k3)")


def flow_matching_loss(
    v_pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample flow-matching loss mean_d (v_pred - (noise - x0))^2, optionally weighted per sample."""
    loss = mean_over_data((v_pred.float() - (noise.float() - x0.float())) ** 2)
    return loss if weight is None else loss * weight


def replay_step(batch: StepBatch, generator: Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log_prob [B], mean, std [B]) of the stored ``x_next`` under the generator's current parameters."""
    out = generator.predict(batch.x, batch.t_model, batch.cond, batch.guidance_scale)
    mean, std = batch.kernel.mean_std(batch.x, out, batch.c, batch.c_next)
    log_prob = batch.kernel.log_prob(batch.x_next, mean, std)
    return log_prob, mean, std


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the batch with masked samples contributing zero (the denominator stays the batch size,
    so that a sum of per-rank means equals the global mean)."""
    return (values * mask.to(values.dtype)).mean()

