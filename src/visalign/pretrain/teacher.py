"""A diffusion teacher for flow pretraining: the x0 target comes from a trained UNet instead of the data.

Knowledge distillation of the denoiser (the target of Salimans & Ho 2022's progressive distillation, here
across parameterisations): at each training point ``x_t = (1 - sigma) z + sigma eps`` of the flow, the
teacher's posterior-mean estimate ``E[z | x_t]`` replaces the single data sample ``z``. The regression target
then has no sample noise, so a small transformer is told *where* the teacher puts each object instead of
averaging over every scene consistent with ``x_t``.

The two models share one autoencoder but normalise its latents differently (SD3: ``(z - shift) * scale``,
SD1.5: ``z * scale``), so with ``a = scale_T / scale_F`` and ``b = (shift_F - shift_T) scale_T`` a flow latent
``z_F`` is the teacher latent ``z_T = a z_F + b``. From ``x_t / (1 - sigma) = z_F + r eps`` with ``r = sigma / (1 - sigma)``:

    a x_t / (1 - sigma) + b = z_T + a r eps      (teacher space, noise-to-signal ratio a r)

so the teacher is queried at the DDPM timestep whose ``sqrt((1 - abar) / abar)`` is nearest (in log) to
``a r``, with input ``sqrt(abar) (a x_t / (1 - sigma) + b)``, and its x0 mapped back by ``(x0_T - b) / a``.
Noise levels outside the teacher's schedule (beyond its last timestep, or below its first) keep the data
target (``valid`` is False there).
"""

from __future__ import annotations

from typing import Any

import torch

from visalign.errors import UserError


class DiffusionTeacher:
    """Wraps a ``StableDiffusionPipeline`` (epsilon, v or x0 prediction) that shares the student's autoencoder."""

    def __init__(self, pipe: Any, student_vae: Any, name: str) -> None:
        self.pipe = pipe
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
                module.eval()
        t_state, s_state = pipe.vae.state_dict(), student_vae.state_dict()
        same = t_state.keys() == s_state.keys() and all(
            torch.equal(t_state[k].float(), s_state[k].float()) for k in t_state
        )
        if not same:
            raise UserError(
                f"flow.teacher={name}: its autoencoder differs from this run's; set vae.init_from={name} so that "
                "both denoisers work in one latent space"
            )
        scale_t = float(pipe.vae.config.scaling_factor)
        shift_t = float(pipe.vae.config.shift_factor or 0.0)
        scale_f = float(student_vae.config.scaling_factor)
        shift_f = float(student_vae.config.shift_factor or 0.0)
        self.a = scale_t / scale_f
        self.b = (shift_f - shift_t) * scale_t
        abar = pipe.scheduler.alphas_cumprod.double()
        self.abar = abar
        self.log_ratio = 0.5 * torch.log((1 - abar) / abar)  # log noise-to-signal per DDPM timestep
        self.prediction_type = pipe.scheduler.config.prediction_type

    @torch.no_grad()
    def x0(self, x_t: torch.Tensor, sigma: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's x0 estimate in the student's latent space, and which rows it covers."""
        n = x_t.shape[0]
        s = sigma.double().clamp(1e-6, 1 - 1e-6)
        log_r = torch.log(self.a * s / (1 - s))
        t = (self.log_ratio.view(1, -1) - log_r.view(-1, 1)).abs().argmin(dim=1)
        # outside the teacher's schedule (sigma near 1, or below its first timestep) the data target stays
        valid = (log_r <= self.log_ratio[-1] + 0.05) & (log_r >= self.log_ratio[0] - 0.05)
        abar = self.abar[t].view(n, 1, 1, 1)
        s4 = s.view(n, 1, 1, 1)
        x_vp = (abar.sqrt() * (self.a * x_t.double() / (1 - s4) + self.b)).float()
        embeds, _ = self.pipe.encode_prompt(prompts, torch.device("cpu"), 1, False)
        out = self.pipe.unet(x_vp, t, encoder_hidden_states=embeds, return_dict=False)[0].double()
        x_vp = x_vp.double()
        if self.prediction_type == "sample":
            x0_t = out
        elif self.prediction_type == "v_prediction":  # v = sqrt(abar) eps - sqrt(1 - abar) x0
            x0_t = abar.sqrt() * x_vp - (1 - abar).sqrt() * out
        else:
            x0_t = (x_vp - (1 - abar).sqrt() * out) / abar.sqrt()
        return ((x0_t - self.b) / self.a).float(), valid
