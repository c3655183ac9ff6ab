"""Step kernels for flow-matching models (velocity prediction).

Convention: x_sigma = (1 - sigma) x_0 + sigma eps, sigma runs from 1 (noise) to 0 (data); the network predicts
v ~ eps - x_0; a step goes sigma -> sigma' with dt = sigma' - sigma < 0. Coordinates ``c`` are sigmas.

* ``ode``  — Euler step of the probability-flow ODE: x' = x + v dt (deterministic).
* ``sde``  — Flow-GRPO's reverse SDE (Liu et al., 2025, "Flow-GRPO: Training Flow Matching Models via Online RL"):
  sigma_t = a sqrt(sigma / (1 - sigma)) (sigma_1 = the schedule's second sigma replaces sigma in the denominator at
  sigma = 1), mu = x + [v + sigma_t^2 / (2 sigma) (x + (1 - sigma) v)] dt, std = sigma_t sqrt(-dt).
* ``cps``  — Coefficients-Preserving Sampling (Wang et al., 2025): s_t = sigma' sin(a pi / 2),
  x0_hat = x - sigma v, x1_hat = x + (1 - sigma) v, mu = (1 - sigma') x0_hat + sqrt(sigma'^2 - s_t^2) x1_hat,
  std = s_t; its log-prob drops the Gaussian constants: log p = -mean_d (x' - mu)^2.

The last step of a schedule (sigma' = 0) is deterministic under every kernel here: never trained on.
"""

from __future__ import annotations

import math

import torch

from visalign.sampling.base import Kernel, mean_over_data, per_sample


class FlowODE(Kernel):
    name = "ode"
    family = "flow"
    stochastic = False

    def mean_std(self, x, out, c, c_next):
        dt = per_sample(c_next - c, x).to(torch.float32)
        mean = x.float() + out.float() * dt
        return mean, torch.zeros_like(c, dtype=torch.float32)

    def trainable(self, c, c_next):
        return torch.zeros_like(c, dtype=torch.bool)


class FlowSDE(Kernel):
    name = "sde"
    family = "flow"

    def __init__(self, noise_level: float = 0.7, sigma_max: float | None = None) -> None:
        super().__init__(noise_level)
        self.sigma_max = sigma_max

    def sigma_t(self, c: torch.Tensor) -> torch.Tensor:
        """The SDE's diffusion coefficient at sigma (without the sqrt(-dt) of the step), ``[B]``."""
        c = c.float()
        cap = self.sigma_max if self.sigma_max is not None else 1.0 - 1e-3
        denom = 1 - torch.where(c >= 1, torch.full_like(c, cap), c)
        return self.noise_level * torch.sqrt(c / denom)

    def mean_std(self, x, out, c, c_next):
        x, v = x.float(), out.float()
        sig_t = self.sigma_t(c)
        last = c_next <= 0
        sig_t = torch.where(last, torch.zeros_like(sig_t), sig_t)
        sigma = per_sample(c.float(), x)
        dt = per_sample((c_next - c).float(), x)
        s2 = per_sample(sig_t, x) ** 2
        mean = x + (v + s2 / (2 * sigma) * (x + (1 - sigma) * v)) * dt
        std = sig_t * torch.sqrt((c - c_next).float().clamp_min(0))
        return mean, std

    def kl_std(self, c: torch.Tensor, c_next: torch.Tensor) -> torch.Tensor:
        """Flow-GRPO's KL denominator uses sigma_t, deliberately without the step's dt."""
        return self.sigma_t(c)

    def trainable(self, c, c_next):
        return (c_next > 0) & (self.sigma_t(c) > 0)


class FlowCPS(Kernel):
    name = "cps"
    family = "flow"

    def __init__(self, noise_level: float = 0.7, sigma_max: float | None = None) -> None:
        super().__init__(noise_level)

    def mean_std(self, x, out, c, c_next):
        x, v = x.float(), out.float()
        s_t = c_next.float() * math.sin(self.noise_level * math.pi / 2)
        sigma = per_sample(c.float(), x)
        sigma_next = per_sample(c_next.float(), x)
        x0_hat = x - sigma * v
        x1_hat = x + (1 - sigma) * v
        coef = torch.sqrt((sigma_next**2 - per_sample(s_t, x) ** 2).clamp_min(0))
        mean = (1 - sigma_next) * x0_hat + coef * x1_hat
        return mean, s_t

    def log_prob(self, x_next, mean, std):
        return -mean_over_data((x_next.detach().float() - mean.float()) ** 2)

    def trainable(self, c, c_next):
        return (c_next > 0) & (self.noise_level > 0)
