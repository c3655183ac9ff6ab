"""The step-kernel contract.

A kernel turns one network output into the distribution of the next latent:

    mean, std = kernel.mean_std(x, out, c, c_next)        # std: per sample, shape [B]
    x_next    = mean + std * z                               # z ~ N(0, I), drawn by the caller
    log_prob  = kernel.log_prob(x_next, mean, std)           # float32, [B], averaged over data dims

``c`` / ``c_next`` are the family's coordinates of the step, one value per sample (shape ``[B]``):
the noise level sigma for flow models, the cumulative alpha-bar for diffusion models.

Log-probs are computed in float32 and **averaged** (not summed) over the data dimensions, the convention
of the reference implementations: it sets the scale of PPO clip ranges such as 1e-4.

Block-averaged exploration (``noise_pool = k > 1``, kernels ``sde`` and ``ddim``): the step's noise is confined to
the subspace of latents that are constant on k x k blocks of each channel, P y = upsample(avgpool_k(y)), an
orthogonal projection with orthonormal basis 1_block / k. The step is then x' = mean + std P z, the marginal-
preserving correction of the kernel acts in that subspace only (the rest of the step is the deterministic sampler),
and the log-prob is the Gaussian density of the subspace coordinates coords(x' - mean) = k avgpool_k(x' - mean),
averaged over the D / k^2 coordinates. The motive: a policy-gradient estimate sum_i A_i grad log p_i carries noise
in every dimension of z, so if the reward depended on a few directions only, its per-sample signal-to-noise ratio
would fall like 1 / D and a k^2-fold smaller noise space would raise it k^2-fold. On ShapesWorld it does not: the
verifier's reward also answers to the fine-scale noise, and k = 4 removed the signal full noise has
(docs/engine.md, "Block-averaged exploration").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


def block_coords(d: torch.Tensor, pool: int) -> torch.Tensor:
    """Coordinates of ``d`` ``[B, C, H, W]`` in the orthonormal basis 1_block / pool of block-constant latents
    (identity for ``pool`` 1): pool x avgpool_pool(d), i.e. each block's sum divided by pool."""
    if pool == 1:
        return d
    return F.avg_pool2d(d, pool) * pool


def block_project(y: torch.Tensor, pool: int) -> torch.Tensor:
    """The orthogonal projection onto block-constant latents: each k x k block replaced by its mean."""
    if pool == 1:
        return y
    return F.interpolate(F.avg_pool2d(y, pool), scale_factor=pool, mode="nearest")


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
    supports_noise_pool: bool = False

    def __init__(self, noise_level: float = 0.0, noise_pool: int = 1) -> None:
        self.noise_level = float(noise_level)
        self.noise_pool = int(noise_pool)
        if self.noise_pool < 1:
            raise ValueError(f"noise_pool must be >= 1, got {noise_pool}")
        if self.noise_pool > 1 and not self.supports_noise_pool:
            from visalign.errors import UserError

            raise UserError(f"sampling.noise_pool={noise_pool} is supported by the 'sde' and 'ddim' kernels only, "
                            f"not by '{self.name}'")

    def _check_pool(self, d: torch.Tensor) -> None:
        if self.noise_pool > 1 and (d.ndim != 4 or d.shape[-1] % self.noise_pool or d.shape[-2] % self.noise_pool):
            from visalign.errors import UserError

            raise UserError(f"sampling.noise_pool={self.noise_pool} must divide the latent's height and width "
                            f"(latent shape {tuple(d.shape[1:])})")

    def coords(self, d: torch.Tensor) -> torch.Tensor:
        """Coordinates of a difference of latents in the step's noise subspace (all of it for noise_pool 1)."""
        self._check_pool(d)
        return block_coords(d, self.noise_pool)

    def project(self, y: torch.Tensor) -> torch.Tensor:
        """Orthogonal projection onto the step's noise subspace (identity for noise_pool 1)."""
        self._check_pool(y)
        return block_project(y, self.noise_pool)

    def mean_std(
        self, x: torch.Tensor, out: torch.Tensor, c: torch.Tensor, c_next: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def log_prob(self, x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        if self.noise_pool == 1:
            return gaussian_log_prob(x_next, mean, std)
        # coords is linear: the density of the subspace coordinates of x_next around those of the mean
        return gaussian_log_prob(self.coords(x_next.detach().float()), self.coords(mean.float()), std)

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
            noise = self.project(noise.to(mean.dtype))
            x_next = mean + per_sample(std, mean).to(mean.dtype) * noise
        x_next = x_next.to(x.dtype)
        valid = std > 0
        if valid.all():
            log_prob = self.log_prob(x_next, mean, std)
        else:
            log_prob = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        return Transition(x_next=x_next, mean=mean, std=std, log_prob=log_prob)
