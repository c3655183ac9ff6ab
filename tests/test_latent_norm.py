"""Per-channel latent normalisation folded into the autoencoder: decoded images unchanged, latents standardised."""

from __future__ import annotations

import pytest
import torch

from visalign.pretrain.build import VAESpec, build_vae
from visalign.pretrain.latent_norm import fold_channel_normalization


def _vae_with_offset_channels() -> torch.nn.Module:
    torch.manual_seed(0)
    vae = build_vae(VAESpec(block_out_channels=(8, 8), norm_num_groups=4))
    with torch.no_grad():  # very different channel means and spreads, like a trained small autoencoder
        vae.quant_conv.bias[:4] += torch.tensor([3.0, -2.0, 0.5, 8.0])
        vae.quant_conv.weight[:4] *= torch.tensor([0.2, 1.0, 3.0, 0.5]).view(-1, 1, 1, 1)
    return vae.eval()


@torch.no_grad()
def test_fold_keeps_reconstructions_and_standardises_each_channel():
    vae = _vae_with_offset_channels()
    x = torch.rand(16, 3, 64, 64) * 2 - 1
    z = vae.encode(x).latent_dist.mode()
    before = vae.decode(z).sample
    mean, std = z.mean((0, 2, 3)), z.std((0, 2, 3))
    assert (mean.abs() > 0.3).any()  # the fixture really is unnormalised

    fold_channel_normalization(vae, mean, std)
    z_new = vae.encode(x).latent_dist.mode()
    torch.testing.assert_close(z_new, (z - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(vae.decode(z_new).sample, before, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z_new.mean((0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(z_new.std((0, 2, 3)), torch.ones(4), atol=1e-4, rtol=0)


@torch.no_grad()
def test_fold_scales_the_posterior_variance_with_the_mean():
    """The posterior std of channel c is divided by s_c, so sampled latents keep their relative spread."""
    vae = _vae_with_offset_channels()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    post = vae.encode(x).latent_dist
    std = torch.tensor([2.0, 0.5, 1.0, 4.0])
    fold_channel_normalization(vae, torch.zeros(4), std)
    torch.testing.assert_close(vae.encode(x).latent_dist.std, post.std / std.view(1, -1, 1, 1), rtol=1e-4, atol=1e-6)


def test_fold_rejects_non_positive_std():
    with pytest.raises(ValueError, match="positive"):
        fold_channel_normalization(_vae_with_offset_channels(), torch.zeros(4), torch.tensor([1.0, 0.0, 1.0, 1.0]))
