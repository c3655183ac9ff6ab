"""Per-channel latent normalisation folded into an ``AutoencoderKL``'s 1x1 quant convolutions.

SD3 / SD1.5 pipelines normalise latents with one scalar pair (``shift_factor``, ``scaling_factor``). When the
channels of a small autoencoder have very different means, a scalar standardisation is dominated by the
differences between channel means: on the first ShapesWorld autoencoder the per-channel standard deviations
in scalar-normalised units were 0.27 / 0.41 / 0.26 / 0.51, so at noise level sigma the image content was
drowned several times earlier than the schedule assumes and the shapes were decided in the last few
sampling steps.

``fold_channel_normalization`` rewrites ``quant_conv`` so that the posterior mean of channel c is
``(mu_c - m_c) / s_c`` (log-variance shifted by ``-2 log s_c``) and ``post_quant_conv`` so that it undoes
this before decoding. Decoded images are unchanged (exactly, up to float rounding), the latents have zero
mean and unit variance per channel, and the pipelines' scalar factors become 1 and 0: nothing outside the
autoencoder's own weights changes, so the folder stays a stock diffusers ``AutoencoderKL``.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL


@torch.no_grad()
def fold_channel_normalization(vae: AutoencoderKL, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make ``encode`` return ``(z - mean) / std`` per channel and ``decode`` accept it; in place."""
    if vae.quant_conv is None or vae.post_quant_conv is None:
        raise ValueError("per-channel latent normalisation needs use_quant_conv and use_post_quant_conv")
    channels = vae.config.latent_channels
    mean, std = mean.double().reshape(channels), std.double().reshape(channels)
    if bool((std <= 0).any()):
        raise ValueError("latent channel standard deviations must be positive")
    # quant_conv outputs [mean (C), logvar (C)] per pixel.
    weight, bias = vae.quant_conv.weight.double(), vae.quant_conv.bias.double()
    weight[:channels] /= std.view(-1, 1, 1, 1)
    bias[:channels] = (bias[:channels] - mean) / std
    bias[channels:] -= 2 * torch.log(std)
    vae.quant_conv.weight.copy_(weight)
    vae.quant_conv.bias.copy_(bias)
    # post_quant_conv sees z_norm; feed it z = z_norm * std + mean.
    post_w, post_b = vae.post_quant_conv.weight.double(), vae.post_quant_conv.bias.double()
    new_b = post_b + (post_w[:, :, 0, 0] @ mean)
    post_w *= std.view(1, -1, 1, 1)
    vae.post_quant_conv.weight.copy_(post_w)
    vae.post_quant_conv.bias.copy_(new_b)
