"""Stage 2: the denoiser (and the text towers) trained on stage 1's latents, resumable step for step.

Every ``log.checkpoint_every`` steps the stage's state goes to ``run_dir/checkpoints/denoiser.safetensors``;
every ``log.sample_every`` steps a grid goes to ``run_dir/samples/``, and every ``log.eval_every`` steps the
test-split score to ``run_dir/eval.jsonl`` with a loadable folder under ``run_dir/exports/``, all with the EMA
weights. A checkpoint remembers a checksum of the autoencoder it was trained on, so it is never resumed on
another one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from visalign.errors import UserError
from visalign.jsonl import append_jsonl, truncate_jsonl
from visalign.lr_schedule import lr_factor
from visalign.pretrain.build import parameter_counts
from visalign.pretrain.checkpoint import load_checkpoint, save_checkpoint
from visalign.pretrain.config import PretrainConfig
from visalign.pretrain.data import ShapesData
from visalign.pretrain.denoiser_setup import DenoiserTraining, setup_denoiser
from visalign.pretrain.evaluation import save_grid, score_test_split
from visalign.pretrain.finalize import export_model
from visalign.pretrain.losses import denoiser_loss
from visalign.pretrain.prefetch import StepBatch, next_batch, stage_batches
from visalign.pretrain.stage import due, log_metrics, set_learning_rate, stage_progress, step_generator


def train_denoiser(
    cfg: PretrainConfig, run_dir: Path, data: ShapesData, vae: Any, console: Console
) -> tuple[Any, float]:
    """Stage 2: the pipeline holding the EMA weights, and the stage's wall time in seconds (over all resumes)."""
    t = cfg.train
    run = setup_denoiser(cfg, run_dir, data, vae, console)
    ckpt_path = run_dir / "checkpoints" / "denoiser.safetensors"
    start, wall = _resume(run, cfg, ckpt_path, run_dir, console)
    metrics = run_dir / "metrics.jsonl"
    truncate_jsonl(metrics, "step", start)
    truncate_jsonl(run_dir / "eval.jsonl", "step", start)
    n_params = parameter_counts(run.pipe)
    console.print(f"stage 2 ({cfg.family}): parameters {n_params}")
    t0 = time.perf_counter() - wall
    run.train_mode(True)
    # Reflow batches come from the cached pairs; rendered batches from a worker that also encodes them.
    batches = None if run.pairs is not None else stage_batches(
        data, "denoiser", t.batch_size, start, t.steps, cfg.data_workers, t.prompt_dropout, run.pipe.vae
    )  # fmt: skip
    with stage_progress(console) as progress:
        task = progress.add_task(cfg.family, total=t.steps, completed=start, info="")
        for step in range(start, t.steps):
            loss, grad_norm = _step(run, cfg, data, batches, step)
            done = step + 1
            progress.update(task, completed=done, info=f"loss {loss.item():.4f}")
            if due(done, cfg.log.every, t.steps):
                wall_now = time.perf_counter() - t0
                row = {"step": done, "loss": loss.item(), "grad_norm": grad_norm.item(), "wall": wall_now}
                line = f"{cfg.family} step {done}/{t.steps} loss {loss.item():.4f} wall {wall_now:.0f}s"
                log_metrics(metrics, row, console, line)
            _evaluate(run, cfg, run_dir, done, lambda: time.perf_counter() - t0, n_params, console)
            if due(done, cfg.log.checkpoint_every, t.steps):
                _save(run, ckpt_path, done, time.perf_counter() - t0)
    run.train_mode(False)
    wall = time.perf_counter() - t0
    if run.ema is not None:
        run.ema.apply()
    return run.pipe, wall


def _step(
    run: DenoiserTraining, cfg: PretrainConfig, data: ShapesData, batches: Iterator[StepBatch] | None, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step (and EMA update); the batch's loss and the gradient norm before clipping."""
    t = cfg.train
    set_learning_rate(run.opt, t.lr * lr_factor(step, t.warmup, t.steps, "constant", t.decay_steps))
    gen = step_generator(cfg.seed, "denoiser", step)
    if batches is None:
        z, noise, prompts = run.pairs.batch(data.rng("reflow", step), t.batch_size, t.prompt_dropout)
        loss = denoiser_loss(run.pipe, cfg.family, cfg, None, prompts, gen, run.teacher, pair=(z, noise))
    else:
        batch = next_batch(batches, step)
        loss = denoiser_loss(
            run.pipe, cfg.family, cfg, batch.images, batch.prompts, gen, run.teacher, latents=batch.latents
        )
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, t.grad_clip)
    run.opt.step()
    if run.ema is not None:
        run.ema.update()
    return loss, grad_norm


def _evaluate(
    run: DenoiserTraining,
    cfg: PretrainConfig,
    run_dir: Path,
    done: int,
    wall: Callable[[], float],
    n_params: dict[str, int],
    console: Console,
) -> None:
    """After step ``done``, with the EMA weights: the sample grid and the test-split score with its export, where
    due. ``wall()`` is the stage's wall time so far."""
    log, steps = cfg.log, cfg.train.steps
    at_eval, at_grid = due(done, log.eval_every, steps), due(done, log.sample_every, steps)
    if not (at_eval or at_grid):
        return
    run.train_mode(False)
    with run.ema.swapped() if run.ema is not None else contextlib.nullcontext():
        if at_grid:
            save_grid(run.pipe, cfg, run_dir / "samples" / f"step-{done:06d}.png", log.grid_prompts)
        if at_eval:
            scores = score_test_split(run.pipe, cfg, log.eval_images_per_prompt, cfg.seed)
            if scores is not None:
                append_jsonl(
                    run_dir / "eval.jsonl",
                    {"step": done, "overall": scores["overall"], "per_tag": scores.get("per_tag")},
                )
                console.print(f"{cfg.family} step {done}: test strict {scores['overall']:.3f} {scores.get('per_tag')}")
            export_model(run.pipe, cfg, run_dir / "exports" / f"step-{done:06d}", done, wall(), n_params)
    run.train_mode(True)


def _resume(
    run: DenoiserTraining, cfg: PretrainConfig, ckpt_path: Path, run_dir: Path, console: Console
) -> tuple[int, float]:
    """Load the stage's checkpoint into ``run`` if there is one; the step and wall time to continue from."""
    state = load_checkpoint(ckpt_path)
    if state is None:
        return 0, 0.0
    for name, module in run.trainables.items():
        module.load_state_dict(state["modules"][name])
    run.opt.load_state_dict(state["optim"])
    if run.ema is not None:  # saved as a list in parameter order
        run.ema.load_state_dict(dict(zip(run.ema.shadow, state["ema"], strict=True)))
        run.ema.updates = state["step"]
    if state["step"] > cfg.train.steps:
        raise UserError(
            f"{ckpt_path}: checkpoint is at step {state['step']}, beyond train.steps={cfg.train.steps}; "
            f"use a new run_dir (or the export at that step under {run_dir / 'exports'})"
        )
    if state.get("vae_fingerprint") != _fingerprint(run.pipe.vae):
        raise UserError(f"{ckpt_path}: was trained on a different VAE than {run_dir / 'vae'}; use a new run_dir")
    console.print(f"stage 2 ({cfg.family}): resuming at step {state['step']}")
    return state["step"], state["wall"]


def _save(run: DenoiserTraining, ckpt_path: Path, done: int, wall: float) -> None:
    save_checkpoint(
        ckpt_path,
        {
            "step": done,
            "modules": {n: m.state_dict() for n, m in run.trainables.items()},
            "optim": run.opt.state_dict(),
            "ema": list(run.ema.state_dict().values()) if run.ema is not None else None,
            "wall": wall,
            "vae_fingerprint": _fingerprint(run.pipe.vae),
        },
    )


def _fingerprint(module: torch.nn.Module) -> float:
    """A cheap checksum of a module's weights (detects a denoiser checkpoint paired with another VAE)."""
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in module.parameters()))
