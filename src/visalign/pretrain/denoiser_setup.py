"""Stage 2's starting point: the pipeline on stage 1's autoencoder, its trainable parts, optimizer and EMA.

Also the optional pieces a recipe adds: text towers initialised from another model (``text.init_from``), a
diffusion teacher (``flow.teacher``) and its cached reflow pairs (``flow.reflow_pairs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from visalign.errors import UserError
from visalign.models.ema import EMA
from visalign.pretrain.build import build_diffusion_pipeline, build_flow_pipeline
from visalign.pretrain.config import PretrainConfig, model_spec
from visalign.pretrain.data import ShapesData
from visalign.pretrain.reflow import ReflowPairs, load_or_generate_pairs
from visalign.pretrain.stage import stage_progress
from visalign.pretrain.teacher import DiffusionTeacher

REFLOW_CHUNK = 64  # teacher samples generated (and cached) at a time


@dataclass
class DenoiserTraining:
    """What stage 2 trains and with what: ``trainables`` by pipeline component name."""

    pipe: Any
    trainables: dict[str, torch.nn.Module]
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    ema: EMA | None
    teacher: DiffusionTeacher | None
    pairs: ReflowPairs | None

    def train_mode(self, on: bool) -> None:
        for module in self.trainables.values():
            module.train(on)


def setup_denoiser(
    cfg: PretrainConfig, run_dir: Path, data: ShapesData, vae: Any, console: Console
) -> DenoiserTraining:
    """The freshly initialised stage 2 (a checkpoint, if any, is loaded over it)."""
    pipe = stage_pipeline(cfg, vae)
    teacher = load_teacher(cfg, pipe)
    pairs = None
    if teacher is not None and cfg.flow.reflow_pairs:
        pairs = reflow_pairs(cfg, run_dir, data, pipe, teacher, console)
    trainables = trainable_components(pipe, cfg)
    named = [(f"{name}.{key}", p) for name, m in trainables.items() for key, p in m.named_parameters()]
    params = [p for _, p in named]
    for p in params:
        p.requires_grad_(True)
    t = cfg.train
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    ema = EMA(named, t.ema_decay, warmup=True) if t.ema_decay > 0 else None
    return DenoiserTraining(pipe, trainables, params, opt, ema, teacher, pairs)


def stage_pipeline(cfg: PretrainConfig, vae: Any) -> Any:
    """The configured family's random-init pipeline (seeded by ``cfg.seed``) holding stage 1's autoencoder; every
    component frozen (the caller unfreezes what it trains)."""
    builder = build_flow_pipeline if cfg.family == "flow" else build_diffusion_pipeline
    pipe = builder(model_spec(cfg), seed=cfg.seed)
    pipe.vae.load_state_dict(vae.state_dict())
    pipe.vae.register_to_config(scaling_factor=vae.config.scaling_factor, shift_factor=vae.config.shift_factor)
    if cfg.text.init_from:
        init_text_towers(pipe, cfg.text.init_from)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
    return pipe


def trainable_components(pipe: Any, cfg: PretrainConfig) -> dict[str, torch.nn.Module]:
    """The denoiser, and the text towers when ``text.train``."""
    flow = cfg.family == "flow"
    names = ["transformer"] if flow else ["unet"]
    if cfg.text.train:
        names += ["text_encoder", "text_encoder_2"] if flow else ["text_encoder"]
    return {n: getattr(pipe, n) for n in names}


def load_teacher(cfg: PretrainConfig, pipe: Any) -> DiffusionTeacher | None:
    """The ``flow.teacher`` diffusion pipeline on this run's autoencoder (None without one)."""
    if cfg.family != "flow" or not cfg.flow.teacher:
        return None
    from visalign.models.loading import load_pipeline

    teacher_family, teacher_pipe = load_pipeline(cfg.flow.teacher)
    if teacher_family != "diffusion":
        raise UserError(f"flow.teacher={cfg.flow.teacher}: a diffusion (UNet) pipeline is needed, got {teacher_family}")
    return DiffusionTeacher(teacher_pipe, pipe.vae, cfg.flow.teacher)


def reflow_pairs(
    cfg: PretrainConfig, run_dir: Path, data: ShapesData, pipe: Any, teacher: DiffusionTeacher, console: Console
) -> ReflowPairs:
    """Stage 2a (reflow): the teacher's (noise, sample) pairs, generated once, cached under ``run_dir/reflow``."""
    down = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    side = cfg.image_size // down
    shape = (pipe.vae.config.latent_channels, side, side)
    n, steps = cfg.flow.reflow_pairs, cfg.flow.reflow_teacher_steps
    console.print(f"stage 2a (reflow): {n} teacher samples ({steps} DDIM steps each)")
    with stage_progress(console) as progress:
        task = progress.add_task("reflow pairs", total=-(-n // REFLOW_CHUNK), info="")
        return load_or_generate_pairs(
            teacher, data, shape, n, steps, REFLOW_CHUNK, run_dir / "reflow",
            on_chunk=lambda done, total: progress.update(task, completed=done),
        )  # fmt: skip


def init_text_towers(pipe: Any, source: str) -> None:
    """Copy the CLIP transformer of ``source``'s text_encoder into every text tower of ``pipe``."""
    from visalign.models.loading import load_pipeline

    _, src = load_pipeline(source)
    if src.tokenizer.get_vocab() != pipe.tokenizer.get_vocab():
        raise UserError(f"text.init_from={source}: its tokenizer's vocabulary differs from this model's")
    weights = _clip_transformer(src.text_encoder).state_dict()
    for name in ("text_encoder", "text_encoder_2"):
        tower = getattr(pipe, name, None)
        if tower is None:
            continue
        try:
            _clip_transformer(tower).load_state_dict(weights)
        except RuntimeError as err:  # sizes differ: name the first mismatch, not the whole report
            lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line] or [str(err)]
            raise UserError(f"text.init_from={source}: its text encoder does not fit {name}: {lines[0]}") from None


def _clip_transformer(tower: Any) -> torch.nn.Module:
    """The CLIP text transformer of a tower (``CLIPTextModel`` holds its layers directly in transformers 5)."""
    return tower.text_model if hasattr(tower, "text_model") else tower
