"""Offline-first loading of reward checkpoints: a local path, or a hub id already in the local cache.

Resolution order for ``name_or_path``:

1. an existing local file or folder: used as is;
2. a Hugging Face hub id found in the local cache (``local_files_only=True``);
3. only if ``HF_HUB_OFFLINE`` is unset and ``allow_download=True``: a download.

Anything else is a ``UserError`` that names the reward, the checkpoint and the missing file, so a reward
never silently runs with random or empty weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from visalign.errors import UserError


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_folder(
    reward: str,
    name_or_path: str | os.PathLike[str],
    *,
    files: Iterable[str] = (),
    patterns: Iterable[str] | None = None,
    allow_download: bool = True,
) -> Path:
    """Return a local folder for ``name_or_path`` (see module docstring).

    ``files``: file names that must be in the folder. ``patterns``: for a hub id, the files to take
    (default: ``files``, or the whole repository when ``files`` is empty).
    """
    path = Path(name_or_path).expanduser()
    files = list(files)
    if path.is_dir():
        folder = path
    elif path.exists():
        raise UserError(f"reward '{reward}': {path} is a file, expected a folder")
    else:
        wanted = list(patterns) if patterns is not None else files
        folder = _from_hub(reward, str(name_or_path), wanted, allow_download)
    for name in files:
        if not (folder / name).is_file():
            raise UserError(f"reward '{reward}': {folder} has no '{name}'")
    return folder


def resolve_file(reward: str, name_or_path: str | os.PathLike[str], filename: str, allow_download: bool = True) -> Path:
    """Return a local file: ``name_or_path`` itself, ``name_or_path/filename``, or ``filename`` of a hub repo."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / filename).is_file():
            return path / filename
        raise UserError(f"reward '{reward}': {path} has no '{filename}'")
    return resolve_folder(reward, name_or_path, files=[filename], allow_download=allow_download) / filename


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _from_hub(reward: str, repo_id: str, files: list[str], allow_download: bool) -> Path:
    if not _looks_like_hub_id(repo_id):
        raise UserError(f"reward '{reward}': checkpoint '{repo_id}' does not exist (not a local path or a hub id)")
    from huggingface_hub import snapshot_download

    patterns = files or None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception as cached_err:  # noqa: BLE001 - any failure here means "not in the cache"
        if _offline() or not allow_download:
            raise UserError(
                f"reward '{reward}': '{repo_id}' is not a local path and is not in the Hugging Face cache "
                f"(offline); run `huggingface-cli download {repo_id}` on a connected machine or pass a local path"
            ) from cached_err
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # noqa: BLE001
        raise UserError(f"reward '{reward}': could not download '{repo_id}': {err}") from err


def load_state_dict(reward: str, path: Path) -> dict[str, torch.Tensor]:
    """Load a ``.pt``/``.pth``/``.bin`` (weights only) or ``.safetensors`` file into a flat tensor dict."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"reward '{reward}': cannot read checkpoint {path}: {err}") from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"reward '{reward}': {path} is not a state dict of tensors")
    if not obj:
        raise UserError(f"reward '{reward}': {path} is an empty state dict")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}


def state_dict_mismatch(err: RuntimeError) -> str:
    """torch's ``load_state_dict`` error cut to its first problem and a count: torch lists every missing and
    unexpected key and every size mismatch, hundreds of names for a real checkpoint."""
    lines = [line.strip() for line in str(err).splitlines()]
    problems = [line for line in lines[1:] if line] or lines[:1]
    first = problems[0] if len(problems[0]) <= 200 else problems[0][:196] + " ..."
    return first + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")


def require_keys(reward: str, path: Path, state: dict[str, torch.Tensor], keys: Iterable[str]) -> None:
    """Raise a ``UserError`` naming the first few keys of ``keys`` that ``state`` lacks."""
    missing = [k for k in keys if k not in state]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"reward '{reward}': {path} is missing {shown}")


def check_tokenizer(reward: str, tokenizer: Any, source: object, vocab_size: int | None = None) -> None:
    """Reject a tokenizer that loaded "successfully" but is empty (a known offline failure mode)."""
    size = len(tokenizer)
    ids = tokenizer("a photo of a cat", add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    if size <= 10 or not ids or all(i == unk for i in ids):
        raise UserError(f"reward '{reward}': tokenizer from {source} is empty or unusable ({size} tokens)")
    if vocab_size is not None and max(ids) >= vocab_size:
        raise UserError(
            f"reward '{reward}': tokenizer from {source} has ids up to {max(ids)}, model vocabulary is {vocab_size}"
        )


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, no parameter gradients (gradients still flow to the inputs)."""
    module.eval()
    module.requires_grad_(False)
    return module
