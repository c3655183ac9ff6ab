"""DDPO (Black et al., 2024, "Training Diffusion Models with Reinforcement Learning", arXiv:2305.13301).

Denoising is an MDP whose policy is the DDIM step with eta (eta = 1: a Gaussian with the DDIM mean and
std = eta sigma_t). Rewards of the final images are normalised per prompt (the paper's per-prompt stat
tracking; here: group z-scores), and DDPO_IS optimises the clipped importance-sampled objective

    rho_t = exp(log p_theta(x_{t-1} | x_t) - log p_old(x_{t-1} | x_t))
    L     = mean max(-A rho_t, -A clip(rho_t, 1 - eps, 1 + eps))

over a (random) fraction of the denoising steps, eps = 1e-4, with several minibatch updates per rollout.
An optional KL to the reference (beta * mean (mu_theta - mu_ref)^2 / (2 std^2)) is available but off by default.

``step_weighting="output_normalized"`` weights each step's term by s_t / |d mean_t / d output|. For an
x0-predicting UNet the DDIM mean barely depends on the output at the first steps (d mean / d x0 = 0.06 at t = 999
of 10 steps, eta 0.5), so without it the low-noise steps dominate the gradient (``_policy_gradient``).
"""

from __future__ import annotations

from visalign.algorithms._policy_gradient import StepWeighting, StepWeights, clipped_pg_loss
from visalign.algorithms.base import Algorithm, RunContext, register_algorithm
from visalign.config_io import StrictModel


@register_algorithm("ddpo")
class DDPO(Algorithm):
    approach = "policy gradient"
    paper = "Training Diffusion Models with Reinforcement Learning (arXiv:2305.13301)"
    needs = frozenset({"likelihood"})
    families = ("diffusion",)
    kernels = ("ddim",)

    class Options(StrictModel):
        clip_range: float = 1e-4
        kl_beta: float = 0.0
        step_weighting: StepWeighting = "none"

    def __init__(self, options: StrictModel) -> None:
        super().__init__(options)
        self.step_weights = StepWeights(options.step_weighting)

    def bind(self, context: RunContext) -> None:
        super().bind(context)
        self.step_weights.bind(context.kernel, context.schedule)

    def loss(self, batch, generator):
        o = self.options
        return clipped_pg_loss(batch, generator, o.clip_range, o.kl_beta, step_weights=self.step_weights(batch))
