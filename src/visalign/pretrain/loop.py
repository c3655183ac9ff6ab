"""Pretraining: stage 1 trains the VAE, stage 2 the denoiser (and text encoders) on its latents.

Run directory layout::

    run_dir/config.yaml          the resolved config
    run_dir/checkpoints/*.safetensors  resumable state per stage (atomic; a rerun continues from here)
    run_dir/vae/                 the finished stage-1 autoencoder (diffusers folder) + vae_report.json
    run_dir/metrics.jsonl        loss / lr / wall time every ``log.every`` steps
    run_dir/eval.jsonl           test-split ShapesBench score every ``log.eval_every`` steps
    run_dir/samples/*.png        sample grids (one row per prompt)
    run_dir/exports/step-N/      a loadable pipeline folder at each evaluation
    run_dir/model/               the final pipeline folder (EMA weights)

Learning rates warm up linearly and then stay constant until the optional final decay (``train.decay_steps``),
so a run of N steps without decay is exactly the first N steps of a longer run: the step a model card names can be
read off ``eval.jsonl`` and reproduced with ``train.steps=N``. The decay is the last stretch of a run, so a
decayed run can be extended only by resuming a checkpoint from before its decay began.

The stages live in ``vae_stage.py`` and ``denoiser_stage.py`` (its losses in ``losses.py``), the model folders in
``finalize.py``; this module runs them in order.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console

from visalign.config_io import dump_config
from visalign.pretrain.build import parameter_counts
from visalign.pretrain.config import PretrainConfig
from visalign.pretrain.data import stage_data
from visalign.pretrain.denoiser_stage import train_denoiser
from visalign.pretrain.finalize import export_model, finalize
from visalign.pretrain.vae_stage import train_vae
from visalign.run_directory import RunLock


def run_pretrain(cfg: PretrainConfig, console: Console | None = None) -> Path:
    """Both stages, resumable; returns the final model folder (``run_dir/model``)."""
    console = console or Console()
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    with RunLock(run_dir, "pretrain") as lock:  # one pretraining run per folder: two would mix their checkpoints
        if lock.stale_message():
            console.print(lock.stale_message(), soft_wrap=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        data = stage_data(cfg, mixture=True)
        t0 = time.perf_counter()
        vae = train_vae(cfg, run_dir, data, console)
        pipe, wall = train_denoiser(cfg, run_dir, data, vae, console)
        out = export_model(pipe, cfg, run_dir / "model", cfg.train.steps, wall, parameter_counts(pipe))
        finalize(cfg, run_dir, out, console)
    console.print(f"pretrain done in {time.perf_counter() - t0:.0f}s (this invocation): {out}")
    return out
