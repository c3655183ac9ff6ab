"""Flow-GRPO (Liu et al., 2025, "Flow-GRPO: Training Flow Matching Models via Online RL", arXiv:2505.05470).

Rollouts: the flow model's ODE is turned into the marginal-preserving reverse SDE (kernel ``sde``; ``cps`` is
the coefficients-preserving variant), so that each step is a Gaussian with mean mu_theta(x_t) and std
s_t = sigma_t sqrt(-dt), sigma_t = a sqrt(sigma / (1 - sigma)). A group of G images per prompt is scored; the
advantages are group z-scores (global std by default for SD3).

Loss, for every trained SDE step t (the same advantage A on every step of a sample):

    rho_t = exp(log p_theta(x_{t-1} | x_t) - log p_old(x_{t-1} | x_t))
    L     = mean max(-A rho_t, -A clip(rho_t, 1 - eps, 1 + eps))
          + beta * mean (mu_theta - mu_ref)^2 / (2 sigma_t^2)

with eps ~ 1e-4 (1e-5 with CPS), beta = 0.04 (GenEval, OCR) / 0.01 (PickScore) / 0 (fast settings); the
reference is the policy with LoRA adapters disabled (or a frozen copy under full fine-tuning).
"""

from __future__ import annotations

from visalign.algorithms._policy_gradient import clipped_pg_loss
from visalign.algorithms.base import Algorithm, register_algorithm
from visalign.config_io import StrictModel


@register_algorithm("flow_grpo")
class FlowGRPO(Algorithm):
    paper = "Flow-GRPO: Training Flow Matching Models via Online RL (arXiv:2505.05470)"
    needs = frozenset({"likelihood"})
    families = ("flow",)
    kernels = ("sde", "cps")

    class Options(StrictModel):
        clip_range: float = 1e-4
        kl_beta: float = 0.0

    def loss(self, batch, generator):
        return clipped_pg_loss(batch, generator, self.options.clip_range, self.options.kl_beta)
