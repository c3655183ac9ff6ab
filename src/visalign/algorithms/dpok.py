"""DPOK (Fan et al., 2023, "DPOK: Reinforcement Learning for Fine-tuning Text-to-Image Diffusion Models",
arXiv:2305.16381).

Denoising is an MDP whose policy is the sampler's Gaussian step. DPOK maximises the reward regularised by the KL
between the fine-tuned and the pretrained trajectory distributions, which it bounds by the sum of per-step KLs:

    min  -E[r(x_0)] + beta * sum_t E[ KL(p_theta(x_{t-1} | x_t) || p_pre(x_{t-1} | x_t)) ]

The reward term is optimised with the clipped importance-sampled policy gradient (DPOK's ratio clipping), and the
per-step KL between two Gaussians of the same std s_t is closed-form:

    rho_t = exp(log p_theta(x_{t-1} | x_t) - log p_old(x_{t-1} | x_t))
    L     = mean max(-A rho_t, -A clip(rho_t, 1 - eps, 1 + eps)) + beta * mean mean_d (mu_theta - mu_pre)^2 / (2 s_t^2)

Unlike Flow-GRPO's KL term, s_t is the step's own std (dt included), so the second term is the exact per-step KL.
Both terms are averaged over the trained steps (the sum over t of the paper scales both by the number of steps, a
constant). Differences from the paper, said here: the advantage A is the group z-score of the reward (the paper
uses a learned value baseline), and samples are trained on the iteration they were drawn in (no replay buffer).
Families: diffusion (DDIM with eta = 1) and flow (Flow-SDE). Defaults: eps = 1e-4, beta = 0.01.
"""

from __future__ import annotations

from visalign.algorithms._policy_gradient import clipped_pg_loss
from visalign.algorithms.base import Algorithm, register_algorithm
from visalign.config_io import StrictModel


@register_algorithm("dpok")
class DPOK(Algorithm):
    approach = "policy gradient"
    paper = "DPOK: Reinforcement Learning for Fine-tuning Text-to-Image Diffusion Models (arXiv:2305.16381)"
    needs = frozenset({"likelihood"})
    kernels = ("ddim", "sde")

    class Options(StrictModel):
        clip_range: float = 1e-4
        kl_beta: float = 0.01

    def loss(self, batch, generator):
        return clipped_pg_loss(batch, generator, self.options.clip_range, self.options.kl_beta, kl_std="step")
