"""Atomic, exact-resume checkpoints.

A checkpoint is a folder ``RUN_DIR/checkpoints/iter_XXXXXX/`` with

* ``state.pt``: everything a resumed run needs to continue bit for bit — trainable weights, optimizer,
  LR schedule, EMA, all RNG states (python, numpy, torch), data position, iteration counter, algorithm state;
* ``meta.json``: format version, iteration, a fingerprint of the run (model, fine-tuning mode, trainable
  parameter names and shapes, algorithm) and the SHA-256 of ``state.pt``.

It is written to a temporary folder and renamed into place, so a crash never leaves a half-written checkpoint
under a final name; only the last ``keep_last`` are kept. Loading a corrupted or incompatible checkpoint raises
``UserError`` naming the folder and what is wrong — never a silent fresh start.

``export_run`` writes a run's trained weights in diffusers' format: the LoRA adapter (``load_lora_weights``) or
the merged pipeline (``save_pretrained``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from visalign.errors import UserError

if TYPE_CHECKING:
    from visalign.config import Config
    from visalign.models.base import Generator

FORMAT_VERSION = 1
STATE_FILE = "state.pt"
META_FILE = "meta.json"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _name(iteration: int) -> str:
    return f"iter_{iteration:06d}"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy(), *np_state[2:]))
    torch.set_rng_state(state["torch"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    run_dir: str | Path, iteration: int, state: dict[str, Any], fingerprint: dict[str, Any], keep_last: int = 2
) -> Path:
    """Write ``state`` atomically as checkpoint ``iteration``; prune older ones; return the folder."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / _name(iteration)
    tmp = root / f".tmp-{_name(iteration)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    with open(tmp / STATE_FILE, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    meta = {
        "format_version": FORMAT_VERSION,
        "iteration": iteration,
        "fingerprint": fingerprint,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    with open(tmp / META_FILE, "w") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("iter_"))


def resolve_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """``None`` -> no resume; ``"auto"`` -> the latest checkpoint of ``run_dir`` (None if there is none);
    a path -> that checkpoint folder, which must exist."""
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise UserError(f"{path}: checkpoint folder not found (resume)")
    return path


def load_checkpoint(path: str | Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Read and verify a checkpoint: its integrity, then its compatibility with this run."""
    path = Path(path)
    meta_file, state_file = path / META_FILE, path / STATE_FILE
    if not meta_file.is_file() or not state_file.is_file():
        raise UserError(f"{path}: not a checkpoint (missing {META_FILE} or {STATE_FILE})")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{meta_file}: corrupted checkpoint metadata ({err})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: incompatible checkpoint format {meta.get('format_version')} (expected {FORMAT_VERSION})")
    data = state_file.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise UserError(f"{state_file}: corrupted checkpoint (checksum mismatch)")
    saved = meta.get("fingerprint", {})
    for key in sorted(set(saved) | set(fingerprint)):
        if saved.get(key) != fingerprint.get(key):
            raise UserError(
                f"{path}: incompatible checkpoint: '{key}' is {saved.get(key)!r} in the checkpoint "
                f"but {fingerprint.get(key)!r} in this run"
            )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a corrupted file
        raise UserError(f"{state_file}: corrupted checkpoint ({type(err).__name__}: {err})") from None
    state["iteration"] = int(meta["iteration"])
    return state


def restore_generator(run_dir: str | Path, checkpoint: str | Path | None = None,
                      use_ema: bool = False) -> tuple[Config, Generator]:
    """Rebuild a run's generator from ``RUN_DIR/config.yaml`` and load a checkpoint's trained weights."""
    from visalign.config import load_train_config
    from visalign.models.loading import load_pipeline, sampler_defaults
    from visalign.trainer import make_generator, resolve_model, run_fingerprint, train_prompts

    run_dir = Path(run_dir)
    cfg = load_train_config(run_dir / "config.yaml")
    name = resolve_model(cfg.model.name)
    family, pipe = load_pipeline(name, torch_dtype=getattr(torch, cfg.model.dtype))
    generator = make_generator(cfg, family, pipe, sampler_defaults(name))
    path = Path(checkpoint) if checkpoint is not None else resolve_resume(run_dir, "auto")
    if path is None:
        raise UserError(f"{run_dir}: no checkpoint to export (checkpoints/ is empty)")
    fingerprint = run_fingerprint(cfg, family, generator, len(train_prompts(cfg)))
    state = load_checkpoint(path, fingerprint)
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
    from visalign.trainer import resolve_model

    cfg, generator = restore_generator(run_dir, checkpoint, use_ema)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if merged:
        generator.save_merged(out)
        from visalign.models.loading import SAMPLER_FILE, resolve_model_path

        card = resolve_model_path(resolve_model(cfg.model.name)) / SAMPLER_FILE
        if card.is_file():
            (out / SAMPLER_FILE).write_text(card.read_text())
    else:
        if cfg.finetune.mode != "lora":
            raise UserError(f"{run_dir}: a full fine-tuning run has no LoRA to export; use --merged")
        generator.save_lora(out)
    return out
