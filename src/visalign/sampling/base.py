"""The step-kernel contract.

A kernel turns one network output into the distribution of the next latent:

    mean, std = kernel.mean_std(x, out, c, c_next)        # std: per sample, shape [B]
    x_next    = mean + std * z                               # z ~ N(0, I), drawn by the caller
    log_prob  = kernel.log_prob(x_next, mean, std)           # float32, [B], averaged over data dims

``c`` / ``c_next`` are the family's coordinates of the step, one value per sample (shape ``[B]``):
the noise level sigma for flow models, the cumulative alpha-bar for diffusion models.

Log-probs are computed in float32 and **averaged** (not summed) over the data dimensions, the convention
of the reference implementations: it sets the scale of PPO clip ranges such as 1e-4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def per_sample(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a ``[B]`` tensor so that it broadcasts against ``like`` (``[B, ...]``)."""
    return value.reshape(value.shape[0], *([1] * (like.ndim - 1)))


def mean_over_data(value: torch.Tensor) -> torch.Tensor:
    return value.mean(dim=tuple(range(1, value.ndim)))


def gaussian_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x_next; mean, std^2 I) averaged over data dims, in float32. ``std`` is ``[B]`` and > 0."""
    x_next, mean, std = x_next.float(), mean.float(), std.float()
    s = per_sample(std, mean)
    log_p = -((x_next.detach() - mean) ** 2) / (2 * s**2) - torch.log(s) - LOG_SQRT_2PI
    return mean_over_data(log_p)


@dataclass
class Transition:
    """One sampled step: the next latent, the Gaussian it was drawn from, and its log-prob ``[B]``."""

    x_next: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    log_prob: torch.Tensor


class Kernel:
    """Base class of step kernels. Subclasses implement ``mean_std`` and may override ``log_prob``."""

    name: str = "kernel"
    family: str = ""
    stochastic: bool = True

    def __init__(self, noise_level: float = 0.0) -> None:
        self.noise_level = float(noise_level)

    def mean_std(
        self, x: torch.Tensor, out: torch.Tensor, c: torch.Tensor, c_next: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def log_prob(self, x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        return gaussian_log_prob(x_next, mean, std)

    def trainable(self, c: torch.Tensor, c_next: torch.Tensor) -> torch.Tensor:
        """Which steps have a proper (non-degenerate) density: only those can be trained on. ``[B]`` bool."""
        return torch.ones_like(c, dtype=torch.bool)

    def step(
        self, x: torch.Tensor, out: torch.Tensor, c: torch.Tensor, c_next: torch.Tensor, noise: torch.Tensor | None
    ) -> Transition:
        """Sample the next latent with the given standard-normal ``noise`` (ignored where std = 0)."""
        mean, std = self.mean_std(x, out, c, c_next)
        if noise is None or not self.stochastic or self.noise_level == 0:
            x_next = mean
        else:
            x_next = mean + per_sample(std, mean).to(mean.dtype) * noise.to(mean.dtype)
        x_next = x_next.to(x.dtype)
        valid = std > 0
        if valid.all():
            log_prob = self.log_prob(x_next, mean, std)
        else:
            log_prob = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        return Transition(x_next=x_next, mean=mean, std=std, log_prob=log_prob)
