"""The clipped likelihood-ratio objective shared by DDPO and Flow-GRPO (and the GRPO family to come).

For one stored step of each sample in the minibatch:

    rho  = exp(log pi_theta(x' | x) - log pi_old(x' | x))
    L_pg = mean_b mask_b max(-A_b rho_b, -A_b clip(rho_b, 1 - eps, 1 + eps))
    L_kl = beta * mean_b mask_b mean_d (mu_theta - mu_ref)^2 / (2 s_kl^2)       (only when beta > 0)

``s_kl`` is the kernel's ``kl_std`` (Flow-SDE: sigma_t without the step's dt, as in flow_grpo).
"""

from __future__ import annotations

import torch

from visalign.algorithms.common import gaussian_mean_kl, masked_mean, ppo_clip, replay_step


def clipped_pg_loss(batch, generator, clip_range: float, kl_beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    log_prob, mean, std = replay_step(batch, generator)
    log_ratio = log_prob - batch.old_log_prob
    per_sample, ratio = ppo_clip(batch.advantages, log_ratio, clip_range)
    loss = masked_mean(per_sample, batch.mask)
    with torch.no_grad():
        metrics = {
            "ratio/mean": float(ratio.mean()),
            "ratio/min": float(ratio.min()),
            "ratio/max": float(ratio.max()),
            "clip_frac": float(((ratio - 1).abs() > clip_range).float().mean()),
            "log_ratio_abs_max": float(log_ratio.abs().max()),
            "approx_kl_old": float(0.5 * (log_ratio**2).mean()),
            "loss/pg": float(loss),
        }
    if kl_beta > 0:
        with torch.no_grad(), generator.reference():
            out_ref = generator.predict(batch.x, batch.t_model, batch.cond, batch.guidance_scale)
            mean_ref, _ = batch.kernel.mean_std(batch.x, out_ref, batch.c, batch.c_next)
        kl_std = getattr(batch.kernel, "kl_std", None)
        s = kl_std(batch.c, batch.c_next) if kl_std is not None else std
        kl = gaussian_mean_kl(mean, mean_ref, s)
        kl_loss = masked_mean(kl, batch.mask)
        loss = loss + kl_beta * kl_loss
        metrics["kl"] = float(kl.detach().mean())
    metrics["loss"] = float(loss.detach())
    return loss, metrics
