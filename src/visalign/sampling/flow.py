"""Step kernels for flow-matching models (velocity prediction).

Convention: x_sigma = (1 - sigma) x_0 + sigma eps, sigma runs from 1 (noise) to 0 (data); the network predicts
v ~ eps - x_0; a step goes sigma -> sigma' with dt = sigma' - sigma < 0. Coordinates ``c`` are sigmas.

* ``ode``  — Euler step of the probability-flow ODE: x' = x + v dt (deterministic).
* ``sde``  — Flow-GRPO's reverse SDE (Liu et al., 2025, "Flow-GRPO: Training Flow Matching Models via Online RL"):
  sigma_t = a sqrt(sigma / (1 - min(sigma, sigma_1))), mu = x + [v + sigma_t^2 / (2 sigma) (x + (1 - sigma) v)] dt,
  std = sigma_t sqrt(-dt). sigma_1 is the schedule's second sigma: the first step's sigma, 1 or just under it (0.999
  from a scheduler that rounds its timesteps), is capped there in the denominator, as the reference code replaces
  sigma = 1 by sigma_1; uncapped, 0.999 gives sigma_t = 22 a and wrecks the sample. With
  ``noise_pool`` k > 1 the noise is block-averaged (``sampling/base.py``): x' = mu + std P z and the correction
  term becomes sigma_t^2 / (2 sigma) P (x + (1 - sigma) v), the SDE whose diffusion matrix is sigma_t^2 P.
* ``cps``  — Coefficients-Preserving Sampling (Wang et al., 2025): s_t = sigma' sin(a pi / 2),
  x0_hat = x - sigma v, x1_hat = x + (1 - sigma) v, mu = (1 - sigma') x0_hat + sqrt(sigma'^2 - s_t^2) x1_hat,
  std = s_t; its log-prob drops the Gaussian constants: log p = -mean_d (x' - mu)^2.
* ``dance`` — DanceGRPO's SDE (Xue et al., 2025, "DanceGRPO: Unleashing GRPO on Visual Generation", arXiv:2505.07818):
  x0_hat = x - sigma v, mu = x + [v + a^2 / (2 sigma^2) (x - (1 - sigma) x0_hat)] dt, std = a sqrt(-dt);
  a Gaussian log-prob like ``sde``.
* ``dpm2m`` — DPM-Solver++(2M) (Lu et al., 2022, arXiv:2211.01095) written for flow models: a deterministic,
  second-order multistep solver of the same ODE (one network evaluation per step; MixGRPO-Flash's ODE sampler).
  With alpha = 1 - sigma, lambda = log(alpha / sigma), h = lambda' - lambda, and the data predictions
  m0 = x - sigma v (this step) and m1 (the previous step, at sigma_prev), r = (lambda - lambda_prev) / h:
  x' = (sigma' / sigma) x - alpha' (e^{-h} - 1) [m0 + (m0 - m1) / (2 r)]. Without a usable previous step
  (the first step, the step after a stochastic one, sigma_prev = 1) and on the last step (sigma' = 0) it takes
  the first-order step, which for flow models is exactly the Euler step x + v dt.

The last step of a schedule (sigma' = 0) is deterministic under every kernel here: never trained on.
"""

from __future__ import annotations

import math

import torch

from visalign.sampling.base import Kernel, Transition, mean_over_data, per_sample


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
    supports_noise_pool = True

    def __init__(self, noise_level: float = 0.7, sigma_max: float | None = None, noise_pool: int = 1) -> None:
        super().__init__(noise_level, noise_pool)
        self.sigma_max = sigma_max

    def sigma_t(self, c: torch.Tensor) -> torch.Tensor:
        """The SDE's diffusion coefficient at sigma (without the sqrt(-dt) of the step), ``[B]``."""
        c = c.float()
        cap = self.sigma_max if self.sigma_max is not None else 1.0 - 1e-3
        return self.noise_level * torch.sqrt(c / (1 - c.clamp(max=cap)))

    def mean_std(self, x, out, c, c_next):
        x, v = x.float(), out.float()
        sig_t = self.sigma_t(c)
        last = c_next <= 0
        sig_t = torch.where(last, torch.zeros_like(sig_t), sig_t)
        sigma = per_sample(c.float(), x)
        dt = per_sample((c_next - c).float(), x)
        s2 = per_sample(sig_t, x) ** 2
        # the score correction acts where the noise does (all of the latent unless noise_pool > 1)
        mean = x + (v + s2 / (2 * sigma) * self.project(x + (1 - sigma) * v)) * dt
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

    def __init__(self, noise_level: float = 0.7, sigma_max: float | None = None, noise_pool: int = 1) -> None:
        super().__init__(noise_level, noise_pool)  # noise_pool > 1: a clear error

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


class FlowDance(Kernel):
    name = "dance"
    family = "flow"

    def __init__(self, noise_level: float = 0.7, sigma_max: float | None = None, noise_pool: int = 1) -> None:
        super().__init__(noise_level, noise_pool)  # noise_pool > 1: a clear error

    def mean_std(self, x, out, c, c_next):
        x, v = x.float(), out.float()
        # the last step (sigma' = 0) stays deterministic, as under every flow kernel here
        a = torch.where(c_next > 0, torch.full_like(c.float(), self.noise_level), torch.zeros_like(c.float()))
        sigma = per_sample(c.float(), x)
        dt = per_sample((c_next - c).float(), x)
        x0_hat = x - sigma * v
        drift = per_sample(a, x) ** 2 / (2 * sigma**2) * (x - (1 - sigma) * x0_hat)
        mean = x + (v + drift) * dt
        std = a * torch.sqrt((c - c_next).float().clamp_min(0))
        return mean, std

    def trainable(self, c, c_next):
        return (c_next > 0) & (self.noise_level > 0)


class FlowDPMSolver2M(Kernel):
    """Deterministic DPM-Solver++(2M). It remembers the previous step's data prediction between calls: a rollout
    calls it step after step on the same batch; a call that does not continue the previous one (another batch,
    a new trajectory, a stochastic step in between) starts over with a first-order step."""

    name = "dpm2m"
    family = "flow"
    stochastic = False

    def __init__(self, noise_level: float = 0.0, sigma_max: float | None = None) -> None:
        super().__init__(0.0)
        self._prev: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (m1, sigma_prev, its sigma')

    def reset(self) -> None:
        self._prev = None

    def _history(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self._prev is None:
            return None
        m1, c_prev, c_prev_next = self._prev
        if m1.shape != x.shape or c_prev_next.shape != c.shape or not torch.equal(c_prev_next.to(c.device), c):
            return None
        return m1.to(x.device), c_prev.to(c.device)

    def mean_std(self, x, out, c, c_next):
        x, v = x.float(), out.float()
        sigma, sigma_next = per_sample(c.float(), x), per_sample(c_next.float(), x)
        m0 = x - sigma * v
        alpha = 1 - sigma
        # first order: x' = (sigma'/sigma) x - alpha' (e^{-h} - 1) m0, with e^{-h} = sigma' alpha / (alpha' sigma);
        # this is algebraically x + v dt, and computed so for an exact match with the Euler step
        mean = x + v * (sigma_next - sigma)
        hist = self._history(x, c)
        if hist is not None:
            m1, c_prev = hist
            sigma_prev = per_sample(c_prev.float(), x)
            second = (sigma_prev < 1) & (sigma_next > 0)
            safe_prev = torch.where(second, sigma_prev, torch.full_like(sigma_prev, 0.5))
            safe_next = torch.where(second, sigma_next, torch.full_like(sigma_next, 0.5))
            lam = torch.log(alpha / sigma)
            h = torch.log((1 - safe_next) / safe_next) - lam
            r = (lam - torch.log((1 - safe_prev) / safe_prev)) / h
            coef = safe_next * alpha / sigma - (1 - safe_next)  # alpha' (e^{-h} - 1)
            d = m0 + (m0 - m1) / (2 * r)
            mean = torch.where(second, (safe_next / sigma) * x - coef * d, mean)
        return mean, torch.zeros_like(c, dtype=torch.float32)

    def step(self, x, out, c, c_next, noise):
        mean, std = self.mean_std(x, out, c, c_next)
        m0 = x.float() - per_sample(c.float(), x) * out.float()
        self._prev = (m0.detach(), c.detach().clone(), c_next.detach().clone())
        log_prob = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        return Transition(x_next=mean.to(x.dtype), mean=mean, std=std, log_prob=log_prob)

    def trainable(self, c, c_next):
        return torch.zeros_like(c, dtype=torch.bool)
