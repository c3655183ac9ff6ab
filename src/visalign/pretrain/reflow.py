"""Reflow from a diffusion teacher: train the flow on (noise, teacher sample) pairs.

Rectified flow's reflow step (Liu, Gong & Liu 2023, "Flow Straight and Fast"; InstaFlow, Liu et al. 2024):
draw noise ``eps``, let the teacher's deterministic sampler (DDIM, eta 0) map it to a clean latent
``z = T(eps, prompt)``, and train the student's straight path between the two,

    x_t = (1 - sigma) z + sigma eps,      target v = eps - z   (or z itself with ``flow.prediction: sample``).

With independent (noise, data) pairs the regression target at mid noise is an average over every scene
consistent with x_t, which a tiny transformer turns into fragments; with the teacher's coupling each x_t lies
on one known path, so the target is one crisp scene. The student learns the teacher's samples, not the data.
(On ShapesWorld the tiny SD3 transformer underfits that map: docs/models.md.)

The two models share one autoencoder but normalise its latents differently; ``DiffusionTeacher`` holds the
map (teacher latent ``z_T = a z_F + b``), and the teacher starts from the same standard normal tensor the
student starts from. Pairs are generated in chunks written atomically under ``RUN_DIR/reflow/``, so a killed
run resumes generation where it stopped; chunk ``k`` is a pure function of ``(seed, k)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from visalign.errors import UserError
from visalign.pretrain.checkpoint import load_checkpoint, save_checkpoint
from visalign.pretrain.data import STAGE_IDS, ShapesData
from visalign.pretrain.teacher import DiffusionTeacher
from visalign.seeding import seed_from_ints, torch_generator

REFLOW_STAGE = STAGE_IDS["reflow"]  # chunk k's noise is seeded apart from the other stages' streams


class ReflowPairs:
    """Stored (noise, teacher latent, prompt) triples, latents in the student's normalisation."""

    def __init__(self, noise: torch.Tensor, latents: torch.Tensor, prompts: list[str]) -> None:
        self.noise, self.latents, self.prompts = noise, latents, prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(
        self, rng: np.random.Generator, size: int, prompt_dropout: float
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """A batch drawn with ``rng`` (the trainer passes ``ShapesData.rng("reflow", step)``, so batch ``step`` is a
        pure function of ``(seed, step)`` like the rendered batches)."""
        index = rng.integers(len(self), size=size)
        drop = rng.random(size) < prompt_dropout
        prompts = ["" if d else self.prompts[i] for i, d in zip(index, drop, strict=True)]
        idx = torch.from_numpy(index)
        return self.latents[idx], self.noise[idx], prompts


@torch.no_grad()
def teacher_latents(
    teacher: DiffusionTeacher, noise: torch.Tensor, prompts: list[str], steps: int
) -> torch.Tensor:
    """The teacher's DDIM (eta 0) sample from ``noise``, mapped into the student's latent normalisation."""
    out = teacher.pipe(
        prompts,
        latents=noise.clone(),
        num_inference_steps=steps,
        guidance_scale=1.0,
        eta=0.0,
        output_type="latent",
        return_dict=False,
    )[0]
    return (out.double() - teacher.b).div(teacher.a).float()


def load_or_generate_pairs(
    teacher: DiffusionTeacher,
    data: ShapesData,
    latent_shape: tuple[int, int, int],
    n_pairs: int,
    steps: int,
    chunk_size: int,
    out_dir: Path,
    on_chunk: Any = None,
) -> ReflowPairs:
    """Generate the missing chunks (``on_chunk(done, total)`` reports progress) and load all of them. Chunk ``k``'s
    noise and prompts are drawn from ``data.seed`` and ``k`` alone (prompts by ``data.draw``, as in training)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n_chunks = -(-n_pairs // chunk_size)
    noises, latents, prompts = [], [], []
    for k in range(n_chunks):
        size = min(chunk_size, n_pairs - k * chunk_size)
        path = out_dir / f"chunk-{k:05d}.safetensors"
        state = load_checkpoint(path)
        if state is not None and (state["size"], state["steps"], tuple(state["noise"].shape[1:])) != (
            size,
            steps,
            latent_shape,
        ):
            raise UserError(
                f"{path}: made with other reflow settings (pairs, teacher steps or latent shape); use a new run_dir"
            )
        if state is None:
            gen = torch_generator(seed_from_ints(data.seed, REFLOW_STAGE, k))
            noise = torch.randn((size, *latent_shape), generator=gen)
            chunk_prompts = [m["prompt"] for m in data.draw(data.rng("reflow", 1_000_000 + k), size)]
            state = {
                "noise": noise,
                "latents": teacher_latents(teacher, noise, chunk_prompts, steps),
                "prompts": chunk_prompts,
                "size": size,
                "steps": steps,
            }
            save_checkpoint(path, state)
        noises.append(state["noise"])
        latents.append(state["latents"])
        prompts.extend(state["prompts"])
        if on_chunk is not None:
            on_chunk(k + 1, n_chunks)
    return ReflowPairs(torch.cat(noises), torch.cat(latents), prompts)
