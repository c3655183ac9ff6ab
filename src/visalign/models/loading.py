"""Load a diffusers pipeline folder (SD3 family -> ``"flow"``, SD1.5 family -> ``"diffusion"``), offline.

``load_pipeline("shapes-flow")`` / ``load_pipeline("shapes-diffusion")`` resolve to the base models shipped
under ``visalign/assets/``; any other argument is a folder written by ``save_pretrained``. Before diffusers
sees the folder, every component that ``model_index.json`` lists (and that the family needs) is checked for
its folder, its config and its weights, so that an incomplete folder fails with a ``UserError`` naming the
missing piece, never with a random initialisation or a hub lookup.

A folder may also hold ``visalign.json``: the sampler settings its model card names (steps, guidance, the
SD3 ``max_sequence_length`` it was trained with). :func:`sampler_defaults` reads it.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from visalign.errors import UserError

Family = Literal["flow", "diffusion"]

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
ALIASES: dict[str, str] = {
    "shapes-flow": "shapes-flow", "shapes-diffusion": "shapes-diffusion", "shapes-vlm": "shapes-vlm",
}  # fmt: skip
FAMILIES: dict[str, Family] = {"StableDiffusion3Pipeline": "flow", "StableDiffusionPipeline": "diffusion"}
# Components a family cannot run without (T5 and the safety checker are optional).
REQUIRED: dict[Family, tuple[str, ...]] = {
    "flow": ("transformer", "scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"),
    "diffusion": ("unet", "scheduler", "vae", "text_encoder", "tokenizer"),
}
SAMPLER_FILE = "visalign.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model", "vocab.txt")


def resolve_model_path(name_or_path: str | Path) -> Path:
    """The folder behind a shipped alias (``shapes-flow``, ``shapes-diffusion``) or a path."""
    text = str(name_or_path)
    path = ASSETS_DIR / ALIASES[text] if text in ALIASES else Path(text).expanduser()
    if not path.exists():
        known = ", ".join(ALIASES)
        raise UserError(f"{path}: no such model folder (shipped models: {known})")
    if not path.is_dir():
        raise UserError(f"{path}: a model must be a diffusers pipeline folder, not a file")
    return path


def read_json_object(file: Path) -> dict[str, Any]:
    """A JSON file that must hold one object; anything else is a ``UserError`` naming the file."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{file}: malformed JSON ({err.msg}, line {err.lineno})") from None
    except UnicodeDecodeError:
        raise UserError(f"{file}: not a UTF-8 JSON file") from None
    except OSError as err:
        raise UserError(f"{file}: cannot read ({err.strerror or err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def read_model_index(path: Path) -> dict[str, Any]:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise UserError(f"{path}: missing model_index.json (not a diffusers pipeline folder)")
    return read_json_object(index_file)


def detect_family(index: dict[str, Any], path: Path) -> Family:
    cls = index.get("_class_name")
    if cls not in FAMILIES:
        supported = ", ".join(f"{k} ({v})" for k, v in FAMILIES.items())
        raise UserError(
            f"{path}/model_index.json: pipeline class {cls!r} is not supported (supported: {supported})"
        )
    return FAMILIES[cls]


def _has_weights(folder: Path) -> bool:
    return any(f.name.endswith(_WEIGHT_SUFFIXES) for f in folder.iterdir() if f.is_file())


def check_components(path: Path, index: dict[str, Any], family: Family) -> None:
    """Raise a ``UserError`` naming the first required component whose folder, config or weights are missing."""
    for name in REQUIRED[family]:
        entry = index.get(name)
        if entry is not None and not (isinstance(entry, list) and len(entry) == 2):
            raise UserError(f"{path}/model_index.json: component '{name}' must be [library, class], got {entry!r}")
        if not entry or entry[0] is None or entry[1] is None:
            raise UserError(f"{path}: component '{name}' is not listed in model_index.json")
        folder = path / name
        if not folder.is_dir():
            raise UserError(f"{path}: missing component folder '{name}/' (listed in model_index.json)")
        cls = str(entry[1])
        if name.startswith("tokenizer"):
            if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
                raise UserError(
                    f"{folder}: tokenizer '{name}' has no vocabulary file ({', '.join(_TOKENIZER_FILES)})"
                )
        elif name == "scheduler" or cls.endswith("Scheduler"):
            if not (folder / "scheduler_config.json").is_file():
                raise UserError(f"{folder}: missing scheduler_config.json for component '{name}'")
        else:
            if not (folder / "config.json").is_file():
                raise UserError(f"{folder}: missing config.json for component '{name}'")
            if not _has_weights(folder):
                raise UserError(
                    f"{folder}: missing weights for component '{name}' (no .safetensors / .bin file)"
                )


def sampler_defaults(name_or_path: str | Path) -> dict[str, Any]:
    """The sampler settings stored in a folder's ``visalign.json`` (empty for folders without one)."""
    path = resolve_model_path(name_or_path)
    file = path / SAMPLER_FILE
    if not file.is_file():
        return {}
    sampler = read_json_object(file).get("sampler", {})
    if not isinstance(sampler, dict):
        raise UserError(f"{file} [sampler]: expected an object of sampler settings, got {type(sampler).__name__}")
    for key, value in sampler.items():
        _check_sampler_value(file, key, value)
    return dict(sampler)


# what each sampler setting of visalign.json must be: (check, description); a NaN guidance samples NaN images
_SAMPLER_RULES: dict[str, tuple[Any, str]] = {
    "num_inference_steps": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
    "guidance_scale": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                       "a finite number"),
    "max_sequence_length": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0),
                            "an integer >= 0"),
}


def _check_sampler_value(file: Path, key: str, value: Any) -> None:
    rule = _SAMPLER_RULES.get(key)
    if rule is not None and not rule[0](value):
        raise UserError(f"{file} [sampler.{key}]: must be {rule[1]}, got {value!r}")


def load_pipeline(name_or_path: str | Path, torch_dtype: torch.dtype = torch.float32) -> tuple[Family, Any]:
    """Load a shipped alias or a diffusers SD3 / SD1.5 folder offline; return ``(family, pipeline)``.

    SD3 folders load without T5 (``text_encoder_3=None, tokenizer_3=None``); SD1.5 folders without a
    safety checker. Weights stored in float16 are cast to ``torch_dtype``. The progress bar is disabled.
    """
    path = resolve_model_path(name_or_path)
    index = read_model_index(path)
    family = detect_family(index, path)
    check_components(path, index, family)
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline

    try:
        with _quiet():
            pipe = _from_pretrained(
                family, path, torch_dtype, StableDiffusion3Pipeline, StableDiffusionPipeline
            )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        # diffusers' messages can list every expected component: the first line is enough to act on
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: could not load the pipeline ({type(err).__name__}: {first[:300]})") from None
    pipe.set_progress_bar_config(disable=True)
    return family, pipe


def _from_pretrained(family: Family, path: Path, torch_dtype: torch.dtype, sd3_cls: Any, sd_cls: Any) -> Any:
    if family == "flow":
        return sd3_cls.from_pretrained(
            path, text_encoder_3=None, tokenizer_3=None, torch_dtype=torch_dtype, local_files_only=True
        )
    return sd_cls.from_pretrained(
        path,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        torch_dtype=torch_dtype,
        local_files_only=True,
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence loading progress bars and the ``torch_dtype`` rename notice while a pipeline loads."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    d_was, t_was = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            yield
    finally:
        if d_was:
            dlog.enable_progress_bar()
        if t_was:
            tlog.enable_progress_bar()
