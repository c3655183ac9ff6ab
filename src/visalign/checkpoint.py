"""Atomic, exact-resume checkpoints that cannot execute code.

A checkpoint is a folder ``RUN_DIR/checkpoints/iter_XXXXXX/`` with

* ``state.safetensors``: everything a resumed run needs to continue bit for bit — trainable weights, optimizer,
  LR schedule, EMA, all RNG states (python, numpy, torch), data position, iteration counter, algorithm state —
  as safetensors tensors plus a JSON document (``visalign.state_io``): loading it parses, it never unpickles;
* ``meta.json``: format version, iteration, a fingerprint of the run (model, fine-tuning mode, trainable
  parameter names and shapes, algorithm), the run's config and the SHA-256 of ``state.safetensors``. The checksum
  detects a torn or damaged file; it authenticates nothing (whoever writes the folder writes it), which is why the
  format itself must be safe to read.

It is written to a temporary folder and renamed into place, so a crash never leaves a half-written checkpoint
under a final name; only the last ``keep_last`` are kept, and temporary folders a killed run left behind are
removed by the next save. Loading a corrupted or incompatible checkpoint raises ``UserError`` naming the folder and
what is wrong (``CorruptCheckpoint`` for damage, so that ``resume=auto`` can fall back to an older one). The
pickled ``state.pt`` of format 1 is refused, not read.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visalign.errors import UserError
from visalign.state_io import state_from_bytes, state_to_bytes

FORMAT_VERSION = 2
STATE_FILE = "state.safetensors"
META_FILE = "meta.json"
PICKLED_STATE_FILE = "state.pt"  # format 1: a pickle, never loaded (unpickling can run code)
TMP_PREFIX = ".tmp-"


class CorruptCheckpoint(UserError):
    """A checkpoint folder that is damaged (torn, truncated, altered), as opposed to one of another run."""


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
    run_dir: str | Path,
    iteration: int,
    state: dict[str, Any],
    fingerprint: dict[str, Any],
    keep_last: int = 2,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write ``state`` atomically as checkpoint ``iteration``; prune older ones; return the folder.

    A full disk or a read-only folder is a ``UserError`` naming the path; the checkpoints already there are kept.
    """
    root = checkpoint_dir(run_dir)
    final = root / _name(iteration)
    tmp = root / f"{TMP_PREFIX}{_name(iteration)}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_temporary(run_dir)
        tmp.mkdir()
        data = state_to_bytes(state)
        with open(tmp / STATE_FILE, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        meta = {
            "format_version": FORMAT_VERSION,
            "iteration": iteration,
            "fingerprint": fingerprint,
            "sha256": hashlib.sha256(data).hexdigest(),
            "config": config,
        }
        with open(tmp / META_FILE, "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{err.filename or root}: cannot write checkpoint {iteration} "
                        f"({err.strerror or err}); the earlier checkpoints in {root} are intact") from None
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_temporary(run_dir: str | Path) -> list[Path]:
    """Delete the temporary folders that a killed or failed checkpoint write left; return them."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.name.startswith(TMP_PREFIX)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


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


def read_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint folder's ``meta.json``, checked for its format."""
    path = Path(path)
    meta_file = path / META_FILE
    if (path / PICKLED_STATE_FILE).is_file() and not (path / STATE_FILE).is_file():
        raise UserError(f"{path}: a format-1 checkpoint ({PICKLED_STATE_FILE}, a pickle); visalign no longer loads "
                        f"pickles because loading one can run code: start the run again (or export it with the "
                        f"release that wrote it)")
    if not meta_file.is_file() or not (path / STATE_FILE).is_file():
        raise CorruptCheckpoint(f"{path}: not a checkpoint (missing {META_FILE} or {STATE_FILE})")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptCheckpoint(f"{meta_file}: corrupted checkpoint metadata ({err})") from None
    except OSError as err:
        raise UserError(f"{meta_file}: cannot read ({err.strerror or err})") from None
    if not isinstance(meta, dict):
        raise CorruptCheckpoint(f"{meta_file}: corrupted checkpoint metadata (not a JSON object)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: incompatible checkpoint format {meta.get('format_version')!r} "
                        f"(expected {FORMAT_VERSION})")
    if not isinstance(meta.get("iteration"), int) or not isinstance(meta.get("fingerprint", {}), dict):
        raise CorruptCheckpoint(f"{meta_file}: corrupted checkpoint metadata (iteration / fingerprint)")
    return meta


def load_checkpoint(path: str | Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Read and verify a checkpoint: its integrity, then its compatibility with this run. The state's
    ``"iteration"`` is the checkpoint's; ``"config"`` is the config of the run that wrote it (or None)."""
    path = Path(path)
    meta = read_meta(path)
    state_file = path / STATE_FILE
    try:
        data = state_file.read_bytes()
    except OSError as err:
        raise UserError(f"{state_file}: cannot read ({err.strerror or err})") from None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CorruptCheckpoint(f"{state_file}: corrupted checkpoint (checksum mismatch)")
    saved = meta.get("fingerprint", {})
    for key in sorted(set(saved) | set(fingerprint)):
        if saved.get(key) != fingerprint.get(key):
            raise UserError(
                f"{path}: incompatible checkpoint: '{key}' is {_short(saved.get(key))} in the checkpoint "
                f"but {_short(fingerprint.get(key))} in this run"
            )
    try:
        state = state_from_bytes(data, state_file)
    except UserError as err:
        raise CorruptCheckpoint(str(err)) from None
    if not isinstance(state, dict):
        raise CorruptCheckpoint(f"{state_file}: corrupted checkpoint (the state is not a mapping)")
    state["iteration"] = int(meta["iteration"])
    state["config"] = meta.get("config")
    return state


def load_latest_valid(run_dir: str | Path, fingerprint: dict[str, Any]
                      ) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """The newest checkpoint of ``run_dir`` that reads back intact: (folder, state, why each newer one was
    skipped). A damaged checkpoint is skipped for an older one (``keep_last`` kept it for this); one of another
    run is an error, as is a folder whose every checkpoint is damaged."""
    skipped: list[str] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path, fingerprint), skipped
        except CorruptCheckpoint as err:
            skipped.append(str(err))
    if skipped:
        raise UserError(f"{checkpoint_dir(run_dir)}: every checkpoint is damaged: " + "; ".join(skipped))
    return None, None, skipped


def find_resume(run_dir: str | Path, resume: str | None, fingerprint: dict[str, Any]
                ) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """(checkpoint, its state, damaged checkpoints skipped) a run continues from: none without ``resume``; the
    named one; or (``resume="auto"``) the newest intact one."""
    if resume is None:
        return None, None, []
    if resume != "auto":
        path = resolve_resume(run_dir, resume)
        return path, load_checkpoint(path, fingerprint), []
    return load_latest_valid(run_dir, fingerprint)


def _short(value: Any, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters (a fingerprint entry can list every trainable parameter)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
