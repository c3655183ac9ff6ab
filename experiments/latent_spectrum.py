"""How much of an autoencoder's latent power sits at high spatial frequencies, next to the images' own.

    python experiments/latent_spectrum.py VAE [VAE ...] [--scenes 256]

Each VAE is a shipped alias, a pipeline folder or a ``vae/`` folder. ShapesWorld train scenes (the same ones
for every VAE) are encoded to their posterior mode and normalised as the denoiser sees them (shift, then
scale). For every channel the mean over the image is removed and the 2D power spectrum is averaged over
scenes and channels. Printed: the share of that power above half the Nyquist frequency (radial frequency >
0.25 cycles per latent pixel), and the same share for the RGB images at the matching frequency (0.25 cycles
per latent pixel = 0.25 / f cycles per image pixel for a downsampling factor f). A latent whose share far
exceeds its images' carries detail that no image frequency explains, which a denoiser has to reproduce
(Skorokhodov et al. 2025, "Improving the Diffusability of Autoencoders").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def high_frequency_share(x: torch.Tensor, cutoff: float) -> float:
    """Share of the mean-removed power of ``x`` ([N, C, H, W]) at radial frequency above ``cutoff`` (cycles
    per pixel), averaged over scenes and channels."""
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).mean(dim=(0, 1))
    fy = torch.fft.fftfreq(x.shape[-2]).abs()[:, None]
    fx = torch.fft.fftfreq(x.shape[-1]).abs()[None, :]
    radius = (fy**2 + fx**2).sqrt()
    return float(power[radius > cutoff].sum() / power.sum())


def load_vae(name: str):  # noqa: ANN201 - diffusers type
    from diffusers import AutoencoderKL

    from visalign.models.loading import resolve_model_path

    path = resolve_model_path(name) if not Path(name).exists() else Path(name)
    path = path / "vae" if (path / "vae" / "config.json").is_file() else path
    return AutoencoderKL.from_pretrained(path, torch_dtype=torch.float32).eval()


@torch.no_grad()
def measure(name: str, images: torch.Tensor) -> dict:
    vae = load_vae(name)
    z = vae.encode(images).latent_dist.mode()
    shift = vae.config.shift_factor or 0.0
    z = (z - shift) * vae.config.scaling_factor
    factor = images.shape[-1] // z.shape[-1]
    return {
        "vae": name,
        "latent": list(z.shape[1:]),
        "latent_hf_share": round(high_frequency_share(z, 0.25), 4),
        "image_hf_share": round(high_frequency_share(images, 0.25 / factor), 4),
        "latent_std": round(float(z.std()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("vaes", nargs="+")
    parser.add_argument("--scenes", type=int, default=256)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from visalign.pretrain.data import ShapesData

    images = ShapesData(args.seed).batch("stats", 0, args.scenes).images
    for name in args.vaes:
        print(json.dumps(measure(name, images)))


if __name__ == "__main__":
    main()
