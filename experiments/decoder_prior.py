"""Give a base model's autoencoder a stronger decoder prior, keeping its encoder and denoiser.

    python experiments/decoder_prior.py MODEL --out DIR [--mode gauss|blur] [--level 1.0] [--steps 600]

Copies the pipeline folder MODEL (an alias or a folder of either family) to DIR and fine-tunes only the
decoder (and ``post_quant_conv``) of its ``AutoencoderKL`` to reconstruct ShapesWorld train scenes from
*corrupted* latents of the frozen encoder. The latent space the denoiser was trained on stays exactly the same,
so DIR samples like MODEL except for the last decode; ``visalign sample --model DIR`` then ``visalign eval``
says whether a decoder that must guess crisp scenes from imprecise latents turns the denoiser's irregular
blobs into shapes. Corruptions (``s`` is the batch's latent std, the statistic the latent scaling normalises):

* ``gauss``: ``z + level * s * N(0, 1)``;
* ``blur``: ``lam * z + (1 - lam) * up(avgpool2(z)) + level * s * N(0, 1)``, ``lam ~ U(0, 1)`` per scene: the
  outline detail below two latent pixels is partly erased, as a denoiser that decides late erases it.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

MODES = ("gauss", "blur")


def corrupt(z: torch.Tensor, mode: str, level: float, gen: torch.Generator) -> torch.Tensor:
    """The decoder's training input for clean latents ``z`` (formulas in the module docstring)."""
    noise = level * z.std() * torch.randn(z.shape, generator=gen)
    if mode == "gauss":
        return z + noise
    if mode == "blur":
        lam = torch.rand(z.shape[0], 1, 1, 1, generator=gen)
        coarse = F.interpolate(F.avg_pool2d(z, 2), scale_factor=2, mode="bilinear")
        return lam * z + (1 - lam) * coarse + noise
    raise ValueError(f"unknown corruption {mode!r}; choose from {', '.join(MODES)}")


def finetune_decoder(
    model: str, out: Path, mode: str, level: float, steps: int, lr: float = 5e-4, batch_size: int = 32, seed: int = 7
) -> Path:
    """Copy MODEL to ``out`` and fine-tune its decoder on corrupted latents; return ``out``."""
    from diffusers import AutoencoderKL
    from rich.progress import Progress

    from visalign.models.loading import resolve_model_path
    from visalign.pretrain.data import ShapesData
    from visalign.pretrain.vae_stage import reconstruction_loss

    src = resolve_model_path(model)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    vae = AutoencoderKL.from_pretrained(src / "vae", torch_dtype=torch.float32)
    vae.requires_grad_(False)
    trained = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=lr, weight_decay=0.0)
    data = ShapesData(seed=seed, image_size=vae.config.sample_size)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    with Progress() as progress:
        task = progress.add_task("decoder", total=steps)
        for step in range(steps):
            x = data.batch("vae", step, batch_size).images
            with torch.no_grad():
                z = corrupt(vae.encode(x).latent_dist.mode(), mode, level, gen)
            y = vae.decode(z).sample
            loss = reconstruction_loss(y, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            opt.step()
            progress.update(task, advance=1, description=f"decoder loss {loss.item():.4f}")
    vae.eval()
    vae.save_pretrained(out / "vae")  # float32: the fine-tuned weights as trained
    print(f"decoder fine-tuned for {steps} steps ({mode}, level {level}) in {time.perf_counter() - t0:.0f} s")
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=MODES, default="gauss")
    parser.add_argument("--level", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = finetune_decoder(args.model, Path(args.out), args.mode, args.level, args.steps, args.lr)
    print(f"wrote {out}; score it with: visalign sample --model {out} --split test --out S && visalign eval S")
    return out


if __name__ == "__main__":
    from visalign.errors import exit_on_user_error

    exit_on_user_error(main)  # a missing or incomplete model folder: one line, no traceback
