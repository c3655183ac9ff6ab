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


class DiffusionGenerator(Generator):
    family = "diffusion"
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

    def make_kernel(self, name: str, noise_level: float, schedule: Schedule, noise_pool: int = 1) -> Kernel:
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
