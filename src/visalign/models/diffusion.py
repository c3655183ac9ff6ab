"""Diffusion adapter: any ``StableDiffusionPipeline`` (``UNet2DConditionModel`` + ``AutoencoderKL``) with epsilon
or v prediction over a DDPM schedule: the shipped tiny diffusion base, SD1.5.

Timesteps come from a ``DDIMScheduler`` built from the pipeline's scheduler config; the kernel coordinates are
alpha_bar(t) and alpha_bar(t - T / S) (the scheduler's final alpha for the last step), as in diffusers' DDIM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from visalign.models import lora as lora_utils
from visalign.models._safetensors import canonicalize
from visalign.models.base import Generator, Schedule
from visalign.sampling import Kernel, build_kernel
from visalign.sampling.base import per_sample


class DiffusionGenerator(Generator):
    family = "diffusion"
    deterministic_kernel = "ddim"
    denoiser_component = "unet"

    def __init__(self, pipeline: Any, device="cpu", negative_prompt: str = "", resolution: int | None = None,
                 **_: Any) -> None:
        super().__init__(pipeline, device, negative_prompt)
        self.check_resolution(resolution)
        self.resolution = resolution
        self.prediction_type = pipeline.scheduler.config.get("prediction_type", "epsilon")

    @property
    def denoiser(self):
        return self.pipeline.unet

    def _encode_batch(self, prompts, with_negative):
        embeds, _ = self.pipeline.encode_prompt(prompts, self.device, 1, False)
        return {"embeds": embeds}, None

    def _forward(self, net, x, t, cond):
        return net(x, t, encoder_hidden_states=cond["embeds"], return_dict=False)[0]

    def decode(self, latents):
        vae = self.pipeline.vae
        images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def encode_images(self, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """The VAE posterior mean times the scaling factor (the inverse of ``decode``)."""
        return self._vae_encode(images, batch_size, shift=0.0)

    # ---- the forward process: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps over the DDPM steps ----------------
    def noise_level_at(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The DDPM step t = min(floor(tau T), T - 1) and its abar_t."""
        scheduler = self.pipeline.scheduler
        num_train = int(scheduler.config.num_train_timesteps)
        step = torch.clamp((tau * num_train).floor(), 0, num_train - 1)
        return step, scheduler.alphas_cumprod.float()[step.long()]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        c = per_sample(c.float(), x0)
        return c.sqrt() * x0.float() + (1 - c).sqrt() * noise.float()

    def regression_target(self, x0: torch.Tensor, noise: torch.Tensor,
                          c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the UNet predicts: eps, v = sqrt(abar) eps - sqrt(1 - abar) x_0, or x_0; unweighted."""
        a = per_sample(c.float(), x0)
        if self.prediction_type == "epsilon":
            target = noise.float()
        elif self.prediction_type == "v_prediction":
            target = a.sqrt() * noise.float() - (1 - a).sqrt() * x0.float()
        elif self.prediction_type == "sample":
            target = x0.float()
        else:
            raise ValueError(f"forward-process training does not support prediction_type '{self.prediction_type}'")
        return target, torch.ones(x0.shape[0], device=x0.device)

    def x0_from_output(self, x: torch.Tensor, out: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The DDIM estimate of x_0 (clipped as the scheduler clips it)."""
        return self.make_kernel("ddim", 0.0, None).x0_eps(x, out, c)[0]

    def _ddim(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.pipeline.scheduler.config)

    def schedule(self, num_steps):
        scheduler = self._ddim()
        scheduler.set_timesteps(num_steps)
        ab = scheduler.alphas_cumprod.float()
        final = float(scheduler.final_alpha_cumprod)
        ts = scheduler.timesteps.long()
        prev = ts - scheduler.config.num_train_timesteps // num_steps
        c_next = torch.where(prev >= 0, ab[prev.clamp_min(0)], torch.full_like(ab[ts], final))
        return Schedule(t_model=ts.float(), c=ab[ts].clone(), c_next=c_next)

    def make_kernel(self, name: str, noise_level: float, schedule: Schedule | None, noise_pool: int = 1) -> Kernel:
        if name not in ("ddim",):
            from visalign.errors import UserError

            raise UserError(f"sampler kernel '{name}' does not apply to diffusion models (ddim)")
        cfg = self.pipeline.scheduler.config
        clip = cfg.get("clip_sample_range", 1.0) if cfg.get("clip_sample", False) else None
        return build_kernel("ddim", noise_level=noise_level, prediction_type=self.prediction_type, clip_sample=clip,
                            noise_pool=noise_pool)

    def save_lora(self, out_dir: str | Path) -> None:
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(
            str(out_dir),
            unet_lora_layers=lora_utils.lora_state_dict(self.denoiser),
            unet_lora_adapter_metadata=lora_utils.lora_metadata(self.denoiser),
        )
        canonicalize(Path(out_dir) / lora_utils.LORA_FILE)  # its metadata order would differ per process
