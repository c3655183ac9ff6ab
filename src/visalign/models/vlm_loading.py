"""Load a Qwen-VL checkpoint folder: ``load_vlm(folder) -> (model, processor)``, offline and without remote code.

Supported families (``model_type`` of ``config.json``): ``qwen2_vl`` (Qwen2-VL), ``qwen2_5_vl`` (Qwen2.5-VL)
and ``qwen3_vl`` (Qwen3-VL, dense). Qwen3-VL-MoE and other image-text models are refused: their processors
or inputs differ. The model is built by ``AutoModelForImageTextToText.from_pretrained`` from safetensors
weights only (``model.safetensors``, or the shards listed by ``model.safetensors.index.json`` as published
checkpoints ship them); the processor is ``VLMProcessor`` (``vlm_processor.py``).

Before transformers sees the folder, each file is checked, so that a broken folder fails with a
``UserError`` naming the file: a missing or malformed ``config.json``, an unsupported family, missing or
unreadable weights (or only ``pytorch_model.bin``), a missing or broken tokenizer or
``preprocessor_config.json``, and files that disagree with each other (the ``<|image_pad|>`` id of
``config.json`` and of the tokenizer, the patch sizes of ``preprocessor_config.json`` and of the vision
config, a tokenizer larger than the embedding). Weights that leave parameters of the model unset, or whose
shapes do not fit, are a ``UserError`` too, never a silent random initialisation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, PretrainedConfig, PreTrainedModel

from visalign.errors import UserError, one_line
from visalign.models.loading import read_json_object
from visalign.models.vlm_files import PREPROCESSOR_FILE, PROCESSOR_FILE, TOKENIZER_FILE
from visalign.models.vlm_processor import VLMProcessor

SUPPORTED_FAMILIES: dict[str, str] = {"qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def detect_family(folder: str | Path) -> str:
    """The ``model_type`` of ``folder/config.json``, which must be one of ``SUPPORTED_FAMILIES``."""
    folder = _folder(folder)
    return _family(folder / CONFIG_FILE, _read_config_json(folder))


def _folder(folder: str | Path) -> Path:
    path = Path(folder).expanduser()
    if not path.exists():
        raise UserError(f"{path}: no such model folder")
    if not path.is_dir():
        raise UserError(f"{path}: a VLM checkpoint must be a folder (config.json, weights, tokenizer, processor)")
    return path


def _read_config_json(folder: Path) -> dict[str, Any]:
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise UserError(f"{folder}: missing {CONFIG_FILE} (not a transformers checkpoint folder)")
    return read_json_object(file)


def _family(file: Path, config: dict[str, Any]) -> str:
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_FAMILIES:
        supported = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_FAMILIES.items())
        raise UserError(f"{file} [model_type]: {model_type!r} is not a supported VLM family (supported: {supported})")
    return str(model_type)


def _build_config(folder: Path) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as err:  # transformers' strict configs raise several exception types for a bad field
        raise UserError(f"{folder / CONFIG_FILE}: invalid config ({type(err).__name__}: {one_line(err, 300)})") from None


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of the folder (the shards of the index, or ``model.safetensors``), each checked
    to exist and to have a readable header; a ``UserError`` naming the file otherwise."""
    index = folder / WEIGHTS_INDEX_FILE
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{index} [weight_map]: missing or empty (expected tensor name -> shard file)")
        files = [folder / str(name) for name in sorted(set(weight_map.values()))]
    elif (folder / WEIGHTS_FILE).is_file():
        files = [folder / WEIGHTS_FILE]
    elif any(folder.glob("pytorch_model*.bin")):
        raise UserError(f"{folder}: weights are only in pytorch_model*.bin; only safetensors weights are loaded")
    else:
        raise UserError(f"{folder}: missing {WEIGHTS_FILE} (or {WEIGHTS_INDEX_FILE} and its shards)")
    for file in files:
        _check_safetensors(file, index if index.is_file() else None)
    return files


def _check_safetensors(file: Path, index: Path | None) -> None:
    from safetensors import safe_open

    if not file.is_file():
        listed = f" (listed in {index.name})" if index is not None else ""
        raise UserError(f"{file}: missing weights shard{listed}")
    try:
        with safe_open(str(file), framework="pt") as handle:
            handle.keys()
    except Exception as err:  # safetensors raises SafetensorError / OSError for a truncated or foreign file
        raise UserError(f"{file}: not a readable safetensors file ({one_line(err, 200)})") from None


def _check_agreement(folder: Path, config: PretrainedConfig, processor: VLMProcessor, pre_file: Path) -> None:
    """The files must describe one model: token ids, vocabulary size and patch geometry."""
    if getattr(config, "image_token_id", None) != processor.image_token_id:
        raise UserError(
            f"{folder / CONFIG_FILE} [image_token_id]: {getattr(config, 'image_token_id', None)} but "
            f"{folder / TOKENIZER_FILE} gives <|image_pad|> the id {processor.image_token_id}"
        )
    vocab_size = config.get_text_config().vocab_size
    if len(processor.tokenizer) > vocab_size:
        raise UserError(
            f"{folder / TOKENIZER_FILE}: {len(processor.tokenizer)} tokens, more than the vocab_size "
            f"{vocab_size} of {CONFIG_FILE}"
        )
    vision, settings = config.vision_config, processor.image_settings
    for ours, theirs in (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size"),
                         ("temporal_patch_size", "temporal_patch_size")):  # fmt: skip
        if getattr(settings, ours) != getattr(vision, theirs):
            raise UserError(
                f"{pre_file} [{ours}]: {getattr(settings, ours)} but {folder / CONFIG_FILE} "
                f"[vision_config.{theirs}] is {getattr(vision, theirs)}"
            )


def _resolve_dtype(dtype: str | torch.dtype) -> str | torch.dtype:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not supported (use auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bar and no load report while the weights load: a failure becomes one ``UserError`` line."""
    import transformers.utils.logging as tlog

    was_enabled, verbosity = tlog.is_progress_bar_enabled(), tlog.get_verbosity()
    tlog.disable_progress_bar()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(verbosity)
        if was_enabled:
            tlog.enable_progress_bar()


def load_vlm(
    folder: str | Path, dtype: str | torch.dtype = "float32", device: str | torch.device | None = None
) -> tuple[PreTrainedModel, VLMProcessor]:
    """Load a Qwen2-VL / Qwen2.5-VL / Qwen3-VL folder; return ``(model in eval mode, processor)``.

    ``dtype``: ``"float32"`` (default), ``"bfloat16"``, ``"float16"``, a ``torch.dtype``, or ``"auto"`` for the
    dtype ``config.json`` records. ``device``: where the model is moved (default: left on the CPU).
    """
    path = _folder(folder)
    _family(path / CONFIG_FILE, _read_config_json(path))
    torch_dtype = _resolve_dtype(dtype)
    config = _build_config(path)
    files = weight_files(path)
    processor = VLMProcessor.from_pretrained(path)
    pre_file = path / PREPROCESSOR_FILE if (path / PREPROCESSOR_FILE).is_file() else path / PROCESSOR_FILE
    _check_agreement(path, config, processor, pre_file)
    weights = files[0] if len(files) == 1 else path / WEIGHTS_INDEX_FILE
    try:
        with _quiet():
            model, info = AutoModelForImageTextToText.from_pretrained(
                str(path),
                config=config,
                dtype=torch_dtype,
                use_safetensors=True,
                local_files_only=True,
                trust_remote_code=False,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported below, with the names, instead of a bare RuntimeError
            )
    except Exception as err:  # shape mismatches and unreadable tensors surface as several exception types
        raise UserError(f"{weights}: could not load the weights ({type(err).__name__}: {one_line(err, 300)})") from None
    for kind in ("missing_keys", "mismatched_keys"):
        keys = sorted(str(k[0] if isinstance(k, (tuple, list)) else k) for k in info.get(kind) or ())
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            what = "has no tensor for" if kind == "missing_keys" else "has tensors of the wrong shape for"
            raise UserError(f"{weights}: {what} {len(keys)} model parameter(s): {shown}")
    model.eval()
    if device is not None:
        model.to(device)
    return model, processor
