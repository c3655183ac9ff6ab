"""What a base model believes the clean image is at every step of its deterministic sampler.

    python experiments/x0_trajectory.py MODEL [--steps 10] [--seed 0] [--prompt TEXT ...] --out FILE.png

MODEL is an alias (``shapes-flow``, ``shapes-diffusion``) or a pipeline folder of either family. For each prompt
(one row) the figure shows the decoded x0 estimate at each of the ``--steps`` sampler steps, left to right, then
the final sample. Flow models take Euler steps on the scheduler's sigmas (x0 = x - sigma v, or the model's x0);
diffusion models take DDIM (eta 0) steps and show the scheduler's ``pred_original_sample``. A model that decides
the layout early shows one compact object from the first columns on; one that decides late shows colour
fragments that merge, move and change colour along the row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PROMPTS = [
    "a photo of a red square",
    "a photo of a blue circle",
    "a photo of two green triangles",
    "a photo of a yellow star",
]


def _decode(vae, latents: torch.Tensor) -> np.ndarray:
    from visalign.pretrain.losses import decode_normalised

    images = decode_normalised(vae, latents).clamp(-1, 1)
    return ((images + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def trajectory(model: str, prompts: list[str], steps: int, seed: int) -> list[np.ndarray]:
    """Decoded x0 estimates per step (``steps`` arrays ``[P, H, W, 3]``) followed by the final samples."""
    from visalign.models.loading import load_pipeline
    from visalign.pretrain.losses import encode_text

    family, pipe = load_pipeline(model)
    pipe.vae.float()
    denoiser = (pipe.transformer if family == "flow" else pipe.unet).float()
    cond = encode_text(pipe, family, prompts)
    channels, size = pipe.vae.config.latent_channels, denoiser.config.sample_size
    x = torch.randn(len(prompts), channels, size, size, generator=torch.Generator().manual_seed(seed))
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    frames = []
    if family == "flow":
        sigmas = scheduler.sigmas.float()
        predicts_sample = scheduler.config.get("prediction_type") == "sample"
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            out = denoiser(hidden_states=x, timestep=torch.full((len(prompts),), float(sigma) * 1000), **cond).sample
            x0 = out if predicts_sample else x - sigma * out
            frames.append(_decode(pipe.vae, x0))
            x = x + (sigma_next - sigma) * (x - x0) / sigma  # Euler on v = (x - x0) / sigma
    else:
        for t in scheduler.timesteps:
            out = denoiser(x, t, **cond).sample
            step = scheduler.step(out, t, x, eta=0.0)
            frames.append(_decode(pipe.vae, step.pred_original_sample))
            x = step.prev_sample
    frames.append(_decode(pipe.vae, x))
    return frames


def grid(frames: list[np.ndarray], scale: int = 2, gap: int = 2) -> Image.Image:
    """Rows = prompts, columns = steps then the final sample."""
    columns = [np.concatenate(list(f), axis=0) for f in frames]
    white = np.full((columns[0].shape[0], gap, 3), 255, dtype=np.uint8)
    body = np.concatenate([c for col in columns for c in (col, white)][:-1], axis=1)
    image = Image.fromarray(body)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", action="append", help="repeat for several rows (default: four ShapesWorld prompts)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid(trajectory(args.model, args.prompt or PROMPTS, args.steps, args.seed)).save(out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    from visalign.errors import exit_on_user_error

    exit_on_user_error(main)  # a missing or incomplete model folder: one line, no traceback
