"""The clipped likelihood-ratio objective shared by DDPO, DPOK and the Flow-GRPO family, written once.

For one stored step of each sample in the minibatch (log-probs averaged over data dims, as the kernels give them):

    rho  = exp(log pi_theta(x' | x) - log pi_old(x' | x))
    L_pg = mean_b mask_b w_b max(-A_b rho_b, -A_b clip(rho_b, 1 - eps, 1 + eps))
    L_kl = beta * mean_b mask_b mean_d (mu_theta - mu_ref)^2 / (2 s_kl^2)       (only when beta > 0)

* ``s_kl``: ``kl_std="kernel"`` uses the kernel's ``kl_std`` where it has one (Flow-SDE: sigma_t without the step's
  dt, as in flow_grpo), else the step's std; ``kl_std="step"`` always uses the step's std, which makes L_kl the
  exact KL(p_theta(x' | x) || p_ref(x' | x)) of the two Gaussians (DPOK).
* ``w_b``: a per-step weight (``step_weights``, ``StepWeights``); 1 by default.
* ``ratio_norm="grpo_guard"`` (GRPO-Guard, Wang et al., 2025, arXiv:2510.22319, "RatioNorm"): with s the step's std
  and mu_old the rollout's step mean, log rho = mean_d[z (mu_theta - mu_old)] / s - b with
  b = mean_d (mu_theta - mu_old)^2 / (2 s^2): the bias -b pushes the ratio below 1 and its spread differs from step
  to step. The normalised ratio removes the bias and the 1 / s scale:

      rho_hat = exp((log rho + b) s)

  and replaces rho in the clipped objective (the rollout must store the step means).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch

from visalign.algorithms.common import gaussian_mean_kl, masked_mean, ppo_clip, replay_step
from visalign.sampling.base import mean_over_data

if TYPE_CHECKING:
    from visalign.models.base import Generator, Schedule
    from visalign.rollout import StepBatch
    from visalign.sampling import Kernel

StepWeighting = Literal["none", "noise_aware", "inverse_dt", "output_normalized"]


def _placeholder(kernel: Kernel, c: torch.Tensor) -> torch.Tensor:
    """A constant latent ``[B, 1, k, k]`` (k = the kernel's noise_pool, so that its block projection applies)."""
    k = kernel.noise_pool
    return torch.zeros(c.shape[0], 1, k, k, dtype=torch.float32, device=c.device)


def kernel_std(kernel: Kernel, c: torch.Tensor, c_next: torch.Tensor) -> torch.Tensor:
    """The std ``[B]`` of a kernel's steps at coordinates (c, c_next). Every kernel's std depends on the step's
    coordinates only, so placeholder latents and network outputs give it without a network evaluation."""
    placeholder = _placeholder(kernel, c)
    _, std = kernel.mean_std(placeholder, placeholder, c, c_next)
    return std.float()


def kernel_output_gain(kernel: Kernel, c: torch.Tensor, c_next: torch.Tensor) -> torch.Tensor:
    """|d mean / d output| ``[B]`` of a kernel's steps: every kernel's mean is affine in the network output at a
    fixed input, so the difference of the means for outputs 1 and 0 is the gain."""
    zero = _placeholder(kernel, c)
    one = torch.ones_like(zero)
    mean_one, _ = kernel.mean_std(zero, one, c, c_next)
    mean_zero, _ = kernel.mean_std(zero, zero, c, c_next)
    return (mean_one - mean_zero).abs().flatten(1).mean(1).float()


def raw_step_weights(kind: StepWeighting, kernel: Kernel, c: torch.Tensor, c_next: torch.Tensor) -> torch.Tensor:
    """Unnormalised per-step weights ``[B]``: ``noise_aware`` (TempFlow-GRPO) the step's std, ``inverse_dt``
    (GRPO-Guard's gradient reweighting) 1 / (c - c_next), ``output_normalized`` std / |d mean / d output|.

    ``output_normalized``: the gradient of a step's log-prob is z / s * d mean / d theta, i.e. its size per unit
    change of the network output is |d mean / d output| / s. For an x0-predicting UNet under DDIM that is 0.14 at
    the first of 10 steps and 3.3 at the ninth (eta 0.5), so the low-noise steps, which decide details, outweigh
    the high-noise ones, which decide the layout, 23 to 1; an epsilon-predicting UNet's is 1.3-2.1 throughout.
    Weighting by the inverse gives every step the same say per unit of output."""
    if kind == "noise_aware":
        return kernel_std(kernel, c, c_next)
    if kind == "inverse_dt":
        return 1.0 / (c - c_next).float().abs()
    if kind == "output_normalized":
        return kernel_std(kernel, c, c_next) / kernel_output_gain(kernel, c, c_next)
    return torch.ones_like(c, dtype=torch.float32)


def step_weight_norm(kind: StepWeighting, kernel: Kernel, schedule: Schedule) -> float:
    """The mean raw weight over the schedule's trainable steps: dividing by it gives weights of mean 1 there, so that
    weighting moves gradient between steps without changing the overall scale (and keeps grad clipping meaningful)."""
    trainable = kernel.trainable(schedule.c, schedule.c_next)
    if not bool(trainable.any()):
        raise ValueError("step weighting: the schedule has no trainable step")
    raw = raw_step_weights(kind, kernel, schedule.c[trainable], schedule.c_next[trainable])
    return float(raw.mean())


class StepWeights:
    """Per-step loss weights of one kind, normalised to mean 1 over the schedule's trainable steps once bound."""

    def __init__(self, kind: StepWeighting) -> None:
        self.kind = kind
        self.norm: float | None = None

    def bind(self, kernel: Kernel, schedule: Schedule) -> None:
        if self.kind != "none":
            self.norm = step_weight_norm(self.kind, kernel, schedule)

    def __call__(self, batch: StepBatch) -> torch.Tensor | None:
        if self.kind == "none":
            return None
        if self.norm is None:
            raise RuntimeError(f"step_weighting='{self.kind}' needs bind(schedule=..., kernel=...) before loss()")
        return raw_step_weights(self.kind, batch.kernel, batch.c, batch.c_next) / self.norm


def clipped_pg_loss(
    batch: StepBatch,
    generator: Generator,
    clip_range: float,
    kl_beta: float,
    *,
    kl_std: Literal["kernel", "step"] = "kernel",
    step_weights: torch.Tensor | None = None,
    ratio_norm: Literal["none", "grpo_guard"] = "none",
) -> tuple[torch.Tensor, dict[str, float]]:
    log_prob, mean, std = replay_step(batch, generator)
    log_ratio = log_prob - batch.old_log_prob
    metrics: dict[str, float] = {}
    used = log_ratio
    if ratio_norm == "grpo_guard":
        if batch.old_mean is None:
            raise RuntimeError("ratio_norm='grpo_guard' needs the rollout's step means (store_mean)")
        s = std.float().detach()
        bias = mean_over_data(batch.kernel.coords(mean.float() - batch.old_mean.float()) ** 2) / (2 * s**2)
        used = (log_ratio + bias) * s
        metrics["guard/bias"] = float(bias.detach().mean())
    per_sample, ratio = ppo_clip(batch.advantages, used, clip_range)
    if step_weights is not None:
        per_sample = per_sample * step_weights.to(per_sample)
        metrics["step_weight/mean"] = float(step_weights.mean())
    loss = masked_mean(per_sample, batch.mask)
    with torch.no_grad():
        metrics.update({
            "ratio/mean": float(ratio.mean()),
            "ratio/min": float(ratio.min()),
            "ratio/max": float(ratio.max()),
            "clip_frac": float(((ratio - 1).abs() > clip_range).float().mean()),
            # the raw log-ratio: the first-inner-step invariant is stated (and logged) on it for every variant
            "log_ratio_abs_max": float(log_ratio.abs().max()),
            "approx_kl_old": float(0.5 * (log_ratio**2).mean()),
            "loss/pg": float(loss),
        })  # fmt: skip
    if kl_beta > 0:
        with torch.no_grad(), generator.reference():
            out_ref = generator.predict(batch.x, batch.t_model, batch.cond, batch.guidance_scale)
            mean_ref, _ = batch.kernel.mean_std(batch.x, out_ref, batch.c, batch.c_next)
        kernel_kl_std = getattr(batch.kernel, "kl_std", None) if kl_std == "kernel" else None
        s_kl = kernel_kl_std(batch.c, batch.c_next) if kernel_kl_std is not None else std
        # over the noise subspace: with noise_pool > 1 the two policies differ as densities only there
        kl = gaussian_mean_kl(batch.kernel.coords(mean), batch.kernel.coords(mean_ref), s_kl)
        kl_loss = masked_mean(kl, batch.mask)
        loss = loss + kl_beta * kl_loss
        metrics["kl"] = float(kl.detach().mean())
    metrics["loss"] = float(loss.detach())
    return loss, metrics
