"""DDIM with eta for epsilon-, v- or x0- ("sample") prediction diffusion models (Song et al., 2021), as used by DDPO
(Black et al., 2024, "Training Diffusion Models with Reinforcement Learning").

Coordinates: ``c`` = alpha_bar_t, ``c_next`` = alpha_bar of the previous (less noisy) timestep.

    x0_hat = (x - sqrt(1 - ab) eps) / sqrt(ab)                 (v-prediction: x0_hat = sqrt(ab) x - sqrt(1 - ab) v)
                                                               (sample: x0_hat = output, eps = (x - sqrt(ab) x0_hat) / sqrt(1 - ab))
    std    = eta sqrt((1 - ab') / (1 - ab)) sqrt(1 - ab / ab')
    mean   = sqrt(ab') x0_hat + sqrt(1 - ab' - std^2) eps
    x'     = mean + std z,   log p = mean_d log N(x'; mean, std^2)

eta = 0 is the deterministic DDIM sampler (the evaluation sampler); eta = 1 the DDPM-like policy DDPO trains.
With ``noise_pool`` k > 1 the noise is block-averaged (``sampling/base.py``): x' = mean + std P z and
mean = sqrt(ab') x0_hat + [sqrt(1 - ab') (I - P) + sqrt(1 - ab' - std^2) P] eps, DDIM's construction with the
variance std^2 P (deterministic DDIM outside the noise subspace).
"""

from __future__ import annotations

import torch

from visalign.sampling.base import Kernel, per_sample


class DDIM(Kernel):
    name = "ddim"
    family = "diffusion"
    supports_noise_pool = True

    def __init__(self, noise_level: float = 1.0, prediction_type: str = "epsilon", clip_sample: float | None = None,
                 noise_pool: int = 1):
        super().__init__(noise_level, noise_pool)
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"DDIM kernel: unsupported prediction_type '{prediction_type}'")
        self.prediction_type = prediction_type
        self.clip_sample = clip_sample
        self.stochastic = self.noise_level > 0

    def x0_eps(self, x: torch.Tensor, out: torch.Tensor, ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = per_sample(ab.float(), x)
        x, out = x.float(), out.float()
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (x - torch.sqrt(1 - a) * eps) / torch.sqrt(a)
        elif self.prediction_type == "sample":
            x0 = out
            eps = (x - torch.sqrt(a) * x0) / torch.sqrt(1 - a)
        else:
            x0 = torch.sqrt(a) * x - torch.sqrt(1 - a) * out
            eps = torch.sqrt(a) * out + torch.sqrt(1 - a) * x
        if self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
        return x0, eps

    def std(self, c: torch.Tensor, c_next: torch.Tensor) -> torch.Tensor:
        ab, ab_prev = c.float(), c_next.float()
        variance = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        return self.noise_level * torch.sqrt(variance.clamp_min(0))

    def mean_std(self, x, out, c, c_next):
        x0, eps = self.x0_eps(x, out, c)
        std = self.std(c, c_next)
        ab_prev = per_sample(c_next.float(), x)
        direction = torch.sqrt((1 - ab_prev - per_sample(std, x) ** 2).clamp_min(0)) * eps
        if self.noise_pool > 1:  # no noise outside the subspace: the deterministic DDIM direction there
            rest = eps - self.project(eps)
            direction = self.project(direction) + torch.sqrt(1 - ab_prev) * rest
        mean = torch.sqrt(ab_prev) * x0 + direction
        return mean, std

    def trainable(self, c, c_next):
        return self.std(c, c_next) > 0
