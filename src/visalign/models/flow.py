"""Flow-matching adapter: any ``StableDiffusion3Pipeline`` (``SD3Transformer2DModel`` + ``AutoencoderKL`` +
``FlowMatchEulerDiscreteScheduler``): the shipped tiny flow base, SD3, SD3.5.

The network predicts the velocity v ~ eps - x_0 at noise level sigma; its time input is sigma * 1000
(the scheduler's ``timesteps``). Sigmas come from the pipeline's own scheduler (shift included).

A folder whose scheduler says ``prediction_type: sample`` (``DPMSolverMultistepScheduler`` with
``use_flow_sigmas``, what ``flow.prediction: sample`` pretraining exports) has a transformer that predicts x_0 instead; the adapter
turns it into the velocity of the same straight path, v = (x_sigma - x0_hat) / sigma, so every kernel and
algorithm sees v either way, and the Euler step on that v is the scheduler's own step. That scheduler rounds its
timesteps to integers: the network sees the rounded time (as in the stock pipeline) and the conversion uses the
schedule's exact sigma; a time outside any schedule (forward-process training) means sigma = t / 1000.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from visalign.models import lora as lora_utils
from visalign.models._safetensors import canonicalize
from visalign.models.base import Generator, Schedule
from visalign.sampling import Kernel, build_kernel
from visalign.sampling.base import per_sample


class FlowGenerator(Generator):
    family = "flow"
    deterministic_kernel = "ode"
    denoiser_component = "transformer"

    def __init__(self, pipeline: Any, device="cpu", negative_prompt: str = "", max_sequence_length: int | None = None,
                 resolution: int | None = None) -> None:
        super().__init__(pipeline, device, negative_prompt)
        if max_sequence_length is None:
            max_sequence_length = 256  # diffusers' default (zero tokens when there is no T5)
        self.max_sequence_length = max_sequence_length
        self.check_resolution(resolution)
        self.resolution = resolution
        self.predicts_sample = pipeline.scheduler.config.get("prediction_type") == "sample"
        self._sigma_of_time: dict[float, float] = {}  # network time -> exact sigma, from the schedules built

    @property
    def denoiser(self):
        return self.pipeline.transformer

    def resolution_rule(self) -> tuple[int, int | None, str]:
        # the transformer cuts the latent into patch x patch tokens and has position embeddings for at most
        # pos_embed_max_size tokens a side
        vae, config = int(self.pipeline.vae_scale_factor), self.denoiser.config
        patch, max_tokens = int(config.patch_size), config.get("pos_embed_max_size")
        largest = None if max_tokens is None else int(max_tokens) * patch * vae
        return vae * patch, largest, f"VAE factor {vae} x patch size {patch}"

    def _encode_batch(self, prompts, with_negative):
        embeds, _neg, pooled, _neg_pooled = self.pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return {"embeds": embeds, "pooled": pooled}, None

    def _forward(self, net, x, t, cond):
        out = net(
            hidden_states=x,
            timestep=t.to(x.dtype),
            encoder_hidden_states=cond["embeds"],
            pooled_projections=cond["pooled"],
            return_dict=False,
        )[0]
        if not self.predicts_sample:
            return out
        times = t.float().reshape(-1).tolist()
        sigma = torch.tensor([self._sigma_of_time.get(ti, ti / 1000.0) for ti in times], device=x.device)
        sigma = sigma.view(-1, *([1] * (x.dim() - 1)))
        return ((x.float() - out.float()) / sigma).to(out.dtype)

    def decode(self, latents):
        vae = self.pipeline.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        z = latents.to(vae.dtype) / vae.config.scaling_factor + shift
        images = vae.decode(z, return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def encode_images(self, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """(VAE posterior mean - shift) x scale, SD3's convention (the inverse of ``decode``)."""
        shift = getattr(self.pipeline.vae.config, "shift_factor", None) or 0.0
        return self._vae_encode(images, batch_size, shift)

    # ---- the forward process: x_sigma = (1 - sigma) x_0 + sigma eps, network time sigma T -----------------------
    def noise_level_at(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tau * int(self.pipeline.scheduler.config.num_train_timesteps), tau

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        c = per_sample(c.float(), x0)
        return (1 - c) * x0.float() + c * noise.float()

    def regression_target(self, x0: torch.Tensor, noise: torch.Tensor,
                          c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The velocity eps - x_0 (the adapter always hands out a velocity). For a transformer that predicts x_0 the
        weight is sigma^2: v_hat - v = (x_0 - x0_hat) / sigma, so sigma^2 ||v_hat - v||^2 = ||x0_hat - x_0||^2,
        its pretraining loss; unweighted, the 1 / sigma^2 would let the least-noised sample of a minibatch carry
        nearly all of its gradient."""
        target = noise.float() - x0.float()
        if self.predicts_sample:
            return target, c.float().to(x0.device) ** 2
        return target, torch.ones(x0.shape[0], device=x0.device)

    def x0_from_output(self, x: torch.Tensor, out: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x - sigma v."""
        return x.float() - per_sample(c.float(), x) * out.float()

    def schedule(self, num_steps):
        scheduler = copy.deepcopy(self.pipeline.scheduler)
        kwargs = {}
        if getattr(scheduler.config, "use_dynamic_shifting", False):
            from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

            c, h, w = self.latent_shape()
            patch = self.denoiser.config.patch_size
            seq = (h // patch) * (w // patch)
            kwargs["mu"] = calculate_shift(
                seq,
                scheduler.config.get("base_image_seq_len", 256),
                scheduler.config.get("max_image_seq_len", 4096),
                scheduler.config.get("base_shift", 0.5),
                scheduler.config.get("max_shift", 1.16),
            )
        scheduler.set_timesteps(num_steps, device="cpu", **kwargs)
        sigmas = scheduler.sigmas.float()
        t_model = scheduler.timesteps.float()
        if self.predicts_sample:
            self._sigma_of_time.update(zip(t_model.tolist(), sigmas[:-1].tolist(), strict=True))
        return Schedule(t_model=t_model, c=sigmas[:-1].clone(), c_next=sigmas[1:].clone())

    def make_kernel(self, name: str, noise_level: float, schedule: Schedule, noise_pool: int = 1) -> Kernel:
        if name not in ("ode", "sde", "cps", "dance"):
            from visalign.errors import UserError

            raise UserError(f"sampler kernel '{name}' does not apply to flow models (ode, sde, cps, dance)")
        if name == "ode":
            return build_kernel("ode")
        sigma_max = float(schedule.c[1]) if len(schedule) > 1 else None
        return build_kernel(name, noise_level=noise_level, sigma_max=sigma_max, noise_pool=noise_pool)

    def save_lora(self, out_dir: str | Path) -> None:
        from diffusers import StableDiffusion3Pipeline

        StableDiffusion3Pipeline.save_lora_weights(
            str(out_dir),
            transformer_lora_layers=lora_utils.lora_state_dict(self.denoiser),
            transformer_lora_adapter_metadata=lora_utils.lora_metadata(self.denoiser),
        )
        canonicalize(Path(out_dir) / lora_utils.LORA_FILE)  # its metadata order would differ per process
