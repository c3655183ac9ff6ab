"""AWM (Xue et al., 2025, "Advantage Weighted Matching: Aligning RL with Pretraining in Diffusion Models",
arXiv:2509.25050).

The pretraining objective, flow matching, re-weighted by the advantage: each final sample x_0 is noised with the
forward process, x_t = (1 - t) x_0 + t eps, and -w(t) ||v_theta(x_t, t) - (eps - x_0)||^2 plays the role of the
sample's log-likelihood in a policy gradient:

    L = -E[ A * (-w(t) ||v_theta(x_t, t) - (eps - x_0)||^2) ] + beta E||v_theta(x_t, t) - v_ref(x_t, t)||^2

(||.||^2 averaged over the data dimensions; w(t) = 1, t or t^2 with t = sigma). Samples with A > 0 are fitted,
samples with A < 0 are pushed away; v_ref is the frozen reference. Rollouts by any solver, no likelihoods.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from visalign.algorithms._forward_process import ForwardOptions, ForwardProcessAlgorithm, regression_loss
from visalign.algorithms.base import register_algorithm
from visalign.algorithms.common import masked_mean


def time_weight(sigma: torch.Tensor, kind: str) -> torch.Tensor:
    """w(t) of the matching term: 1, t or t^2 (t = sigma)."""
    if kind == "uniform":
        return torch.ones_like(sigma)
    if kind == "t":
        return sigma
    if kind == "t2":
        return sigma**2
    raise ValueError(f"unknown AWM weighting '{kind}' (uniform, t, t2)")


@register_algorithm("awm")
class AWM(ForwardProcessAlgorithm):
    paper = "Advantage Weighted Matching: Aligning RL with Pretraining in Diffusion Models (arXiv:2509.25050)"
    families = ("flow",)

    class Options(ForwardOptions):
        weighting: Literal["uniform", "t", "t2"] = "uniform"  # w(t)
        kl_beta: float = Field(0.0, ge=0.0)  # beta of E||v_theta - v_ref||^2

    def loss(self, batch, generator):
        opts = self.options
        noised = self.noise(batch, generator)
        v = self.predict(generator, noised, batch)
        matching = regression_loss(v, noised)  # ||v_theta - (eps - x_0)||^2
        weight = time_weight(noised.level.to(matching.device), opts.weighting)
        log_lik = -weight * matching  # the matching "log-likelihood" of the sample
        policy = masked_mean(-batch.advantages.float() * log_lik, batch.mask)
        loss = policy
        metrics = {"loss/policy": float(policy.detach()), "fm_loss": float(matching.detach().mean()),
                   "noise_level/mean": float(noised.level.mean())}
        return self.with_reference_penalty(loss, metrics, generator, noised, batch, v, opts.kl_beta)
