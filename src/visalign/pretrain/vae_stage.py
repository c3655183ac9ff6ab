"""Stage 1: the autoencoder, trained on rendered train-split scenes (L1 + MSE + a small KL), or reused.

The stage ends with ``run_dir/vae/`` (a diffusers ``AutoencoderKL`` folder with its latent factors set, and
``vae_report.json``); a rerun finds it there and skips the stage, and a killed run resumes from
``run_dir/checkpoints/vae.safetensors``. ``vae.init_from`` copies another model's autoencoder instead of training.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console

from visalign.jsonl import truncate_jsonl
from visalign.lr_schedule import lr_factor
from visalign.pretrain.build import build_vae, count_parameters
from visalign.pretrain.checkpoint import load_checkpoint, save_checkpoint
from visalign.pretrain.config import PretrainConfig, vae_spec
from visalign.pretrain.data import ShapesData, stage_data
from visalign.pretrain.prefetch import next_batch, stage_batches
from visalign.pretrain.stage import due, log_metrics, set_learning_rate, stage_progress, step_generator
from visalign.pretrain.vae_report import REPORT_FILE, measure_vae, write_vae_folder


def decoder_input(posterior: Any, latent_noise: float, gen: torch.Generator) -> torch.Tensor:
    """A posterior sample plus ``latent_noise`` times the batch's latent std of Gaussian noise.

    The std is taken over the whole batch and all channels, the statistic ``scaling_factor`` normalises by,
    so the decoder learns to tolerate noise of ``latent_noise`` in the denoiser's normalised units; it is
    recomputed every step, so scaling the latents up does not escape it.
    """
    z = posterior.sample(generator=gen)
    if latent_noise > 0:
        z = z + latent_noise * z.detach().std() * torch.randn(z.shape, generator=gen)
    return z


def reconstruction_loss(decoded: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The autoencoder stage's loss on images in [-1, 1]: L1 (sharp edges) plus MSE (no large errors)."""
    return (decoded - images).abs().mean() + F.mse_loss(decoded, images)


def train_vae(cfg: PretrainConfig, run_dir: Path, data: ShapesData, console: Console) -> Any:
    """Train (or resume, or reuse) the autoencoder; return it with the scaling/shift factors set from ``data``,
    the denoiser's scenes (stage 1 itself sees them at even odds with ``vae.train_mixture: false``)."""
    from diffusers import AutoencoderKL

    out = run_dir / "vae"
    if (out / "config.json").is_file():
        console.print(f"stage 1 (vae): reusing {out}")
        return AutoencoderKL.from_pretrained(out)
    if cfg.vae.init_from:
        return copy_vae(cfg, data, out, console)
    v = cfg.vae
    ckpt_path = run_dir / "checkpoints" / "vae.safetensors"
    vae, opt, start, wall = _resume_or_start(cfg, ckpt_path, console)
    t0 = time.perf_counter() - wall
    metrics = run_dir / "metrics.jsonl"
    truncate_jsonl(metrics, "vae_step", start)
    scenes = data if v.train_mixture else stage_data(cfg, mixture=False)
    batches = stage_batches(scenes, "vae", v.batch_size, start, v.steps, cfg.data_workers)
    with stage_progress(console) as progress:
        task = progress.add_task("vae", total=v.steps, completed=start, info="")
        for step in range(start, v.steps):
            rec, kl = _vae_step(cfg, vae, opt, next_batch(batches, step).images, step)
            done = step + 1
            progress.update(task, completed=done, info=f"rec {rec.item():.4f}")
            if due(done, cfg.log.every, v.steps):
                row = {"vae_step": done, "rec": rec.item(), "kl": kl.item(), "wall": time.perf_counter() - t0}
                log_metrics(metrics, row, console, f"vae step {done}/{v.steps} rec {rec.item():.4f} kl {kl.item():.2f}")
            if due(done, cfg.log.checkpoint_every, v.steps):
                state = {"step": done, "model": vae.state_dict(), "optim": opt.state_dict()}
                save_checkpoint(ckpt_path, {**state, "wall": time.perf_counter() - t0})
    vae.eval()
    report = measure_vae(cfg, vae, data)
    report.update(steps=v.steps, wall_s=load_checkpoint(ckpt_path)["wall"], params=count_parameters(vae))
    write_vae_folder(vae, out, report)
    console.print(f"stage 1 (vae): done; {json.dumps(report)}")
    return vae


def copy_vae(cfg: PretrainConfig, data: ShapesData, out: Path, console: Console) -> Any:
    """Stage 1 as ``vae.init_from``: another model's autoencoder with this family's scaling / shift factors."""
    from diffusers import AutoencoderKL

    from visalign.models.loading import resolve_model_path

    src = resolve_model_path(cfg.vae.init_from)  # a shipped alias or a folder
    src = src / "vae" if (src / "vae" / "config.json").is_file() else src
    vae = AutoencoderKL.from_pretrained(src)
    vae.eval()
    report = measure_vae(cfg, vae, data)
    previous = src / REPORT_FILE
    if previous.is_file():  # the training it had, for the card
        old = json.loads(previous.read_text())
        report.update({k: old[k] for k in ("steps", "wall_s") if k in old})
    report.update({"params": count_parameters(vae), "init_from": str(src)})
    write_vae_folder(vae, out, report)
    console.print(f"stage 1 (vae): copied from {src}; {json.dumps(report)}")
    return vae


def _resume_or_start(
    cfg: PretrainConfig, ckpt_path: Path, console: Console
) -> tuple[Any, torch.optim.Optimizer, int, float]:
    """The autoencoder and its optimizer, fresh (seeded by ``cfg.seed``) or from the stage's checkpoint; the step
    and the wall time they are at."""
    torch.manual_seed(cfg.seed)
    vae = build_vae(vae_spec(cfg))
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae.lr, weight_decay=0.0)
    start, wall = 0, 0.0
    state = load_checkpoint(ckpt_path)
    if state is not None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        start, wall = state["step"], state["wall"]
        console.print(f"stage 1 (vae): resuming at step {start}")
    vae.train()
    return vae, opt, start, wall


def _vae_step(
    cfg: PretrainConfig, vae: Any, opt: torch.optim.Optimizer, images: torch.Tensor, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on ``images``; the reconstruction and KL terms of its loss."""
    v = cfg.vae
    set_learning_rate(opt, v.lr * lr_factor(step, v.warmup))
    post = vae.encode(images).latent_dist
    z = decoder_input(post, v.latent_noise, step_generator(cfg.seed, "vae", step))
    rec = reconstruction_loss(vae.decode(z).sample, images)
    kl = post.kl().mean() / z[0].numel()
    loss = rec + v.kl_weight * kl
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
    opt.step()
    return rec, kl
