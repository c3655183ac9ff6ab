"""A pretraining run's model folders: the exports, the final model with its card, and the copy to ``export.path``.

Every folder is a loadable diffusers pipeline with ``visalign.json`` (the card's sampler, the spec, a training
summary). Learning rates are constant after the warm-up and batches depend only on (seed, step), so without a
final decay the export at step N of a longer run is the model an N-step run ends with (``finalize_export``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from visalign.errors import UserError
from visalign.pretrain.card import CONTACT_SHEET, contact_sheet, write_card
from visalign.pretrain.config import PretrainConfig, model_spec
from visalign.pretrain.evaluation import final_evaluation, have_verifier
from visalign.pretrain.export import save_pipeline
from visalign.pretrain.spec import spec_to_dict


def sampler_settings(cfg: PretrainConfig) -> dict[str, Any]:
    """The sampler the model card names, as stored in ``visalign.json``."""
    out: dict[str, Any] = {"num_inference_steps": cfg.sample.steps, "guidance_scale": cfg.sample.guidance}
    if cfg.family == "flow":
        out["max_sequence_length"] = 0
    return out


def export_model(
    pipe: Any, cfg: PretrainConfig, out: Path, step: int, wall: float, n_params: dict[str, int]
) -> Path:
    """Write a loadable pipeline folder with ``visalign.json`` (sampler, spec, training summary)."""
    extra = {
        "family": cfg.family,
        "spec": spec_to_dict(model_spec(cfg)),
        "training": {
            "denoiser_steps": step,
            "denoiser_wall_s": round(wall, 1),
            "batch_size": cfg.train.batch_size,
        },
        "parameters": n_params,
    }
    return save_pipeline(pipe, out, sampler=sampler_settings(cfg), extra=extra, half=cfg.export.half)


def finalize(cfg: PretrainConfig, run_dir: Path, out: Path, console: Console) -> None:
    """The card's evaluation (test split, seed 0), contact sheet and README.md; then the copy to export.path.

    The evaluation samples the exported folder as ``load_pipeline`` (and so ``visalign sample``) loads it, not the
    weights in memory: with ``export.half`` the stored float16 weights differ from the float32 ones by their
    rounding, which changes every image by a few pixel levels and a few of the card's 280 verdicts.
    """
    from visalign.models.loading import load_pipeline

    name = Path(cfg.export.path).name if cfg.export.path else f"shapes-{cfg.family}"
    if cfg.log.final_images_per_prompt > 0 and have_verifier():
        _, pipe = load_pipeline(out)
        evaluation = final_evaluation(pipe, cfg, cfg.log.final_images_per_prompt, seed=0)
        contact_sheet(evaluation, out / CONTACT_SHEET)
        write_card(out, run_dir, cfg, evaluation, name)
        res = evaluation["results"]
        console.print(f"final test-split strict {res['overall']:.3f} soft {res['soft']:.3f} {res['per_tag']}")
    if cfg.export.path:
        dest = Path(cfg.export.path)
        _replace_with_copy(out, dest)
        console.print(f"copied the model to {dest}")


def finalize_export(cfg: PretrainConfig, step: int, console: Console | None = None) -> Path:
    """Make ``run_dir/exports/step-N`` the run's final model (what a ``train.steps=N`` run ends with)."""
    console = console or Console()
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir)
    src = run_dir / "exports" / f"step-{step:06d}"
    if not src.is_dir():
        raise UserError(f"{src}: no export at step {step} (exports are written every log.eval_every steps)")
    if cfg.train.decay_steps > 0:
        raise UserError(
            "train.decay_steps > 0: the export at an intermediate step was not decayed; run to train.steps instead"
        )
    if cfg.train.steps != step:
        raise UserError(f"train.steps={cfg.train.steps} but the export is step {step}; pass train.steps={step}")
    out = run_dir / "model"
    _replace_with_copy(src, out)
    finalize(cfg, run_dir, out, console)
    return out


def _replace_with_copy(src: Path, dest: Path) -> None:
    """``dest`` becomes a copy of the folder ``src`` (readable by everyone, as model folders are)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    dest.chmod(0o755)
