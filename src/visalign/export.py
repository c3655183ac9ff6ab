"""Exporting a run: rebuild its generator from ``RUN_DIR/config.yaml``, load a checkpoint's trained weights, and
write them in diffusers' format, the LoRA adapter (``load_lora_weights``) or the merged pipeline
(``save_pretrained``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from visalign.checkpoint import load_checkpoint, load_latest_valid
from visalign.errors import UserError
from visalign.prompts import train_prompts
from visalign.run_setup import load_model, make_generator, resolve_model, run_fingerprint

if TYPE_CHECKING:
    from visalign.config import Config
    from visalign.models.base import Generator


def restore_generator(run_dir: str | Path, checkpoint: str | Path | None = None,
                      use_ema: bool = False) -> tuple[Config, Generator]:
    """Rebuild a run's generator and load a checkpoint's trained weights (the newest intact one by default)."""
    from visalign.config import load_train_config

    run_dir = Path(run_dir)
    cfg = load_train_config(run_dir / "config.yaml")
    family, pipe, defaults = load_model(cfg)
    generator = make_generator(cfg, family, pipe, defaults)
    fingerprint = run_fingerprint(cfg, family, generator, len(train_prompts(cfg)))
    if checkpoint is not None:
        path: Path | None = Path(checkpoint)
        state = load_checkpoint(path, fingerprint)
    else:
        path, state, _skipped = load_latest_valid(run_dir, fingerprint)
    if path is None or state is None:
        raise UserError(f"{run_dir}: no checkpoint to export (checkpoints/ is empty)")
    weights = state["model"]
    if use_ema:
        if state.get("ema") is None:
            raise UserError(f"{path}: the run kept no EMA (train.ema.enabled was false)")
        weights = state["ema"]
    generator.load_trainable_state_dict(weights)
    return cfg, generator


def export_run(run_dir: str | Path, out: str | Path, merged: bool = False, checkpoint: str | Path | None = None,
               use_ema: bool = False) -> Path:
    """Write a run's trained weights in diffusers' format: the LoRA adapter, or the merged pipeline."""
    from visalign.models.loading import SAMPLER_FILE, resolve_model_path

    cfg, generator = restore_generator(run_dir, checkpoint, use_ema)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if merged:
        generator.save_merged(out)
        card = resolve_model_path(resolve_model(cfg.model.name)) / SAMPLER_FILE
        if card.is_file():
            (out / SAMPLER_FILE).write_text(card.read_text())
    else:
        if cfg.finetune.mode != "lora":
            raise UserError(f"{run_dir}: a full fine-tuning run has no LoRA to export; use --merged")
        generator.save_lora(out)
    return out
