"""Write a pipeline (or one model, such as the stage-1 autoencoder) as a self-contained diffusers folder, atomically.

The folder is written next to its destination under a temporary name and renamed into place, so an
interrupted export never leaves a half-written model where a loader would find it. Tokenizers are recorded
as ``PreTrainedTokenizerFast`` (the name every transformers version resolves). ``visalign.json`` holds the
sampler settings the model card names and any extra facts (spec, training summary).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from visalign.models.loading import SAMPLER_FILE

TOKENIZER_CLASS = "PreTrainedTokenizerFast"


@contextlib.contextmanager
def _quiet_saving() -> Iterator[None]:
    """Hide diffusers' shard progress bars and its note that the absent T5 (``None``) is not saved."""
    import diffusers.utils.logging as dlog

    level, bars = dlog.get_verbosity(), dlog.is_progress_bar_enabled()
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(level)
        if bars:
            dlog.enable_progress_bar()


def _to_half(folder: Path) -> None:
    for file in folder.rglob("*.safetensors"):
        tensors = load_file(file)
        half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
        save_file(half, file, metadata={"format": "pt"})


def _forget_call_settings(pipe: Any) -> None:
    """Drop the padding / truncation a call leaves on each fast tokenizer's backend: ``tokenizer.json`` would
    otherwise record how the pipeline was last called, and a rerun would not be byte-exact. Every call sets
    both again (the pipelines pass ``padding="max_length", truncation=True``)."""
    for component in pipe.components.values():
        backend = getattr(component, "backend_tokenizer", None)  # only fast tokenizers have one
        if backend is not None:
            backend.no_padding()
            backend.no_truncation()


def _portable_tokenizers(folder: Path) -> None:
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    for name, entry in index.items():
        if name.startswith("tokenizer") and isinstance(entry, list) and entry[0] == "transformers":
            index[name] = ["transformers", TOKENIZER_CLASS]
            config_file = folder / name / "tokenizer_config.json"
            if config_file.is_file():
                config = json.loads(config_file.read_text())
                config["tokenizer_class"] = TOKENIZER_CLASS
                config_file.write_text(json.dumps(config, indent=2) + "\n")
    index_file.write_text(json.dumps(index, indent=2) + "\n")


@contextlib.contextmanager
def _replacing(out_dir: Path) -> Iterator[Path]:
    """A private temporary folder beside ``out_dir`` to write into; it replaces ``out_dir`` when the block ends
    without an error (and is removed when it does not)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is shared like any other
    try:
        yield tmp
        old = out_dir.with_name(f".{out_dir.name}.old")
        if out_dir.exists():
            if old.exists():
                shutil.rmtree(old)
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_pipeline(
    pipe: Any,
    out_dir: str | Path,
    sampler: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Save ``pipe`` to ``out_dir`` (replacing it) with ``visalign.json``; ``half`` stores float16 weights."""
    out_dir = Path(out_dir)
    with _replacing(out_dir) as tmp:
        _forget_call_settings(pipe)
        with torch.no_grad(), _quiet_saving():
            pipe.save_pretrained(tmp, safe_serialization=True)
        if half:
            _to_half(tmp)
        _portable_tokenizers(tmp)
        info = {"sampler": dict(sampler or {}), **dict(extra or {})}
        (tmp / SAMPLER_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def save_module_folder(module: Any, out_dir: str | Path) -> Path:
    """``module.save_pretrained`` into ``out_dir`` (replacing it), atomically."""
    out_dir = Path(out_dir)
    with _replacing(out_dir) as tmp:
        module.save_pretrained(tmp)
    return out_dir
