"""Stage 2's losses: the target each pipeline's scheduler declares, on normalised autoencoder latents.

* flow (SD3): ``x_t = (1 - sigma) z + sigma eps`` with logit-normal or uniform sigma; the transformer predicts
  the velocity ``eps - z`` or (``flow.prediction: sample``) ``z`` itself. A diffusion ``teacher`` replaces ``z`` in
  the target by its estimate E[z | x_t] (``teacher.py``); a reflow ``pair`` fixes (z, eps) to a teacher sample and
  the noise it came from (``reflow.py``); ``flow.pixel_loss`` adds the decoded x0 estimate's pixel error.
* diffusion (SD1.5): DDPM noising at a uniform timestep, and the epsilon, v or x0 target.

Every random draw comes from the step's generator, in a fixed order (noise, then sigma or the timestep).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from visalign.pretrain.config import PretrainConfig
from visalign.pretrain.prefetch import encode_normalised
from visalign.pretrain.teacher import DiffusionTeacher


def encode_text(pipe: Any, family: str, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Text conditioning through the pipeline's own ``encode_prompt`` (with gradients)."""
    if family == "flow":
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=torch.device("cpu"),
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=0,
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
    embeds, _ = pipe.encode_prompt(prompts, torch.device("cpu"), 1, False)
    return {"encoder_hidden_states": embeds}


def decode_normalised(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """The inverse normalisation, then the decoder: images in about [-1, 1]."""
    return vae.decode(latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)).sample


def decoded_x0_loss(vae: Any, x0_hat: torch.Tensor, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Pixel MSE between the decoded x0 estimate (normalised latents) and the images, averaged over ``rows`` only
    (0 when none is selected). Gradients flow through the frozen decoder into ``x0_hat``."""
    if not bool(rows.any()):
        return x0_hat.sum() * 0.0
    return F.mse_loss(decode_normalised(vae, x0_hat[rows]), images[rows])


def denoiser_loss(
    pipe: Any,
    family: str,
    cfg: PretrainConfig,
    images: torch.Tensor | None,
    prompts: list[str],
    gen: torch.Generator,
    teacher: DiffusionTeacher | None = None,
    pair: tuple[torch.Tensor, torch.Tensor] | None = None,
    latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of one batch of images in [-1, 1] (see the module docstring). With a reflow ``pair`` (normalised
    latents, the noise they were sampled from) ``images`` is unused; ``latents``: ``images`` already encoded
    (``prefetch.py``)."""
    if pair is not None:
        z, noise = pair
    else:
        if latents is None:
            with torch.no_grad():
                latents = encode_normalised(pipe.vae, images)
        z = latents
        noise = torch.randn(z.shape, generator=gen)
    cond = encode_text(pipe, family, prompts)
    if family == "flow":
        return _flow_loss(pipe, cfg, z, noise, cond, gen, images, prompts, teacher, reflow=pair is not None)
    return _diffusion_loss(pipe, z, noise, cond, gen)


def _flow_loss(
    pipe: Any,
    cfg: PretrainConfig,
    z: torch.Tensor,
    noise: torch.Tensor,
    cond: dict[str, torch.Tensor],
    gen: torch.Generator,
    images: torch.Tensor | None,
    prompts: list[str],
    teacher: DiffusionTeacher | None,
    reflow: bool,
) -> torch.Tensor:
    """Flow matching on the straight path from ``z`` to ``noise``. With a ``teacher`` (and no reflow pair) the
    clean latent in the target is the teacher's estimate wherever its schedule reaches sigma, so
    v = (x_t - x0_hat) / sigma there."""
    f, n = cfg.flow, z.shape[0]
    if f.timestep_sampling == "logit_normal":
        sigma = torch.sigmoid(f.logit_mean + f.logit_std * torch.randn(n, generator=gen))
    else:
        sigma = torch.rand(n, generator=gen)
    sigma = f.max_sigma * sigma
    s = sigma.view(n, 1, 1, 1)
    x_t = (1 - s) * z + s * noise
    pred = pipe.transformer(hidden_states=x_t, timestep=sigma * 1000, return_dict=False, **cond)[0]
    predicts_sample = pipe.scheduler.config.get("prediction_type") == "sample"  # as the RL adapter reads it
    if teacher is None or reflow:
        loss = F.mse_loss(pred, z if predicts_sample else noise - z)
        if f.pixel_loss and images is not None:
            x0_hat = pred if predicts_sample else x_t - s * pred
            loss = loss + f.pixel_loss * decoded_x0_loss(pipe.vae, x0_hat, images, sigma <= f.pixel_loss_max_sigma)
        return loss
    x0_hat, valid = teacher.x0(x_t, sigma, prompts)
    rows = valid.view(n, 1, 1, 1)
    if predicts_sample:
        return F.mse_loss(pred, torch.where(rows, x0_hat, z))
    return F.mse_loss(pred, torch.where(rows, (x_t - x0_hat) / s, noise - z))


def _diffusion_loss(
    pipe: Any, z: torch.Tensor, noise: torch.Tensor, cond: dict[str, torch.Tensor], gen: torch.Generator
) -> torch.Tensor:
    """DDPM noising at a uniform timestep and the target of the scheduler's ``prediction_type``."""
    t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (z.shape[0],), generator=gen)
    x_t = pipe.scheduler.add_noise(z, noise, t)
    pred = pipe.unet(x_t, t, return_dict=False, **cond)[0]
    if pipe.scheduler.config.prediction_type == "v_prediction":
        return F.mse_loss(pred, pipe.scheduler.get_velocity(z, noise, t))
    if pipe.scheduler.config.prediction_type == "sample":
        return F.mse_loss(pred, z)
    return F.mse_loss(pred, noise)
