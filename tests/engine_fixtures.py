"""Tiny engine pieces shared by the algorithm and trainer tests: a LoRA generator on a random tiny pipeline, a
perturbation that makes the policy differ from its reference, a brightness reward and a decoder that keeps it, and
the Flow-SDE step computed by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visalign.models import FinetuneSpec, build_generator
from visalign.pretrain.build import build_diffusion_pipeline, build_flow_pipeline
from visalign.rewards.base import Reward


def tiny_generator(family: str = "flow", mode: str = "lora"):
    """A generator over a random tiny pipeline of ``family``, set up for LoRA (rank 4) or full fine-tuning."""
    if family == "flow":
        gen = build_generator("flow", build_flow_pipeline(seed=0), max_sequence_length=0)
    else:
        gen = build_generator("diffusion", build_diffusion_pipeline(seed=0))
    gen.setup_finetune(FinetuneSpec(mode=mode, rank=4, alpha=4.0))
    return gen


def perturb(gen, scale: float = 0.05, seed: int = 3) -> None:
    """Add seeded Gaussian noise to the trainable parameters (a policy that differs from the reference)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gen.trainable_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


class Brightness(Reward):
    """Mean pixel value: an easy reward that any working algorithm raises, differentiable."""

    name = "brightness"
    differentiable = True

    def score(self, images, prompts, metadata):
        return {"brightness": images.mean(dim=(1, 2, 3))}


def linear_decode(latents: torch.Tensor) -> torch.Tensor:
    """A decoder whose colours follow the latents (a random-init VAE's GroupNorms wash brightness out)."""
    return torch.sigmoid(F.interpolate(latents[:, :3].float(), scale_factor=4))


def flow_sde_by_hand(gen, batch, sigma_max: float, a: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow-SDE mean ``[B, C, H, W]`` and std ``[B]`` of the batch's step from the network's velocity ``v``:
    sigma_t = a sqrt(t / (1 - t)) (``sigma_max`` for t in the denominator at t = 1), dt = t_next - t,
    mean = x + (v + sigma_t^2 / (2 t) (x + (1 - t) v)) dt, std = sigma_t sqrt(-dt)."""
    with torch.no_grad():
        v = gen.predict(batch.x, batch.t_model, batch.cond)
    s, sn = batch.c.view(-1, 1, 1, 1), batch.c_next.view(-1, 1, 1, 1)
    sig_t = a * torch.sqrt(s / (1 - torch.where(s == 1, torch.full_like(s, sigma_max), s)))
    dt = sn - s
    mean = batch.x + (v + sig_t**2 / (2 * s) * (batch.x + (1 - s) * v)) * dt
    return mean, (sig_t * torch.sqrt(-dt)).flatten()


def tiny_trainer(tmp_path, overrides, family: str = "flow", reward: Reward | None = None, name: str = "run"):
    """A ``Trainer`` on a random tiny pipeline of ``family`` (flow: Flow-GRPO; diffusion: DDPO with DDIM eta 1),
    2 prompts x 4 images, 4 steps, no evaluation or checkpoints, rewarded by ``Brightness`` unless given."""
    from visalign.config import load_train_config
    from visalign.trainer import Trainer

    base = [f"run_dir={tmp_path / name}", "eval.enabled=false", "log.progress=false", "data.prompts_per_iter=2",
            "data.group_size=4", "sampling.num_steps=4", "checkpoint.every=0"]
    if family == "flow":
        base.append("model.max_sequence_length=0")
        pipe = build_flow_pipeline(seed=0)
    else:
        base += ["algorithm.name=ddpo", "sampling.kernel=ddim", "sampling.noise_level=1.0"]
        pipe = build_diffusion_pipeline(seed=0)
    cfg = load_train_config(None, base + list(overrides))
    return Trainer(cfg, pipeline=(family, pipe), rewards=[(reward or Brightness(), 1.0)])
