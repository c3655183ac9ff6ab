"""A CLIP dual encoder loaded from a transformers folder, with differentiable image/text embeddings.

Used by CLIPScore, PickScore and the LAION aesthetic predictor (which only needs the image tower); HPSv2
builds the same ``CLIPModel`` from a converted open_clip state dict (``_openclip_convert``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from visalign.errors import UserError
from visalign.rewards._images import CLIP_MEAN, CLIP_STD, clip_preprocess
from visalign.rewards._loading import check_tokenizer, freeze, resolve_folder

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))
# what to take from a hub repo: configs, tokenizer, weights (never open_clip / flax / tf duplicates)
MODEL_PATTERNS = ["*.json", "*.txt", "model.safetensors", "model-*.safetensors"]
AUX_PATTERNS = ["*.json", "*.txt"]  # processor / tokenizer only


@dataclass
class ImageTransform:
    """Resize shorter side to ``size``, center-crop ``crop``, normalise with ``mean``/``std``."""

    size: int
    crop: int
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(images, self.size, self.crop, self.mean, self.std)


def _edge(value: Any, default: int) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for key in ("shortest_edge", "height", "width"):
            if key in value:
                return int(value[key])
    return default


def image_transform_from(folder: Path | None, default_size: int) -> ImageTransform:
    """Read ``preprocessor_config.json`` (CLIPImageProcessor format) if present, else CLIP defaults."""
    if folder is None or not (folder / "preprocessor_config.json").is_file():
        return ImageTransform(default_size, default_size)
    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    size = _edge(cfg.get("size"), default_size)
    crop = _edge(cfg.get("crop_size"), size) if cfg.get("do_center_crop", True) else size
    mean = tuple(float(x) for x in cfg.get("image_mean", CLIP_MEAN))
    std = tuple(float(x) for x in cfg.get("image_std", CLIP_STD))
    return ImageTransform(size, crop, mean, std)


def has_tokenizer_files(folder: Path) -> bool:
    return any(all((folder / f).is_file() for f in group) for group in TOKENIZER_FILES)


def load_clip_tokenizer(reward: str, source: str | Path, vocab_size: int | None) -> Any:
    """A ``CLIPTokenizer`` from a folder or hub id; refuses an empty one."""
    from transformers import CLIPTokenizer

    folder = resolve_folder(reward, source, patterns=AUX_PATTERNS)
    if not has_tokenizer_files(folder):
        raise UserError(
            f"reward '{reward}': {folder} has no tokenizer files (vocab.json + merges.txt, or tokenizer.json); "
            "pass tokenizer=PATH"
        )
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    check_tokenizer(reward, tokenizer, folder, vocab_size)
    return tokenizer


def _check_weights(reward: str, folder: Path) -> None:
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise UserError(f"reward '{reward}': {folder} has no weights file ({' or '.join(WEIGHT_FILES[:2])})")


def _raise_on_missing(reward: str, folder: Path, info: dict[str, Any]) -> None:
    missing = list(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(sorted(missing)[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"reward '{reward}': checkpoint {folder} is incomplete, missing {shown}")
    mismatched = list(info.get("mismatched_keys") or [])
    if mismatched:
        raise UserError(f"reward '{reward}': checkpoint {folder} has wrongly shaped tensors: {mismatched[:3]}")


class ClipEncoder(torch.nn.Module):
    """CLIP image/text embeddings (L2-normalised), differentiable with respect to the images.

    The model follows the images: the first call with images on another device moves it there.
    """

    def __init__(self, model: Any, tokenizer: Any | None, transform: ImageTransform) -> None:
        super().__init__()
        self.model = freeze(model)
        self.tokenizer = tokenizer
        self.transform = transform

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().exp()

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def follow(self, device: torch.device) -> None:
        if self.device != device:
            self.model.to(device)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        self.follow(images.device)
        pixels = self.transform(images)
        vision = self.model.vision_model(pixel_values=pixels)
        return F.normalize(self.model.visual_projection(vision.pooler_output), dim=-1)

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise RuntimeError("this CLIP encoder was loaded without a tokenizer")
        max_len = min(77, int(self.model.config.text_config.max_position_embeddings))
        tokens = self.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=max_len, return_tensors="pt"
        )
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        text = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask"))
        return F.normalize(self.model.text_projection(text.pooler_output), dim=-1)


def load_clip(
    reward: str,
    name_or_path: str,
    *,
    processor: str | None = None,
    tokenizer: str | None = None,
    need_text: bool = True,
    dtype: torch.dtype = torch.float32,
) -> ClipEncoder:
    """Load a transformers CLIP folder (``config.json`` + weights [+ tokenizer + preprocessor_config.json]).

    ``processor`` / ``tokenizer``: other folders or hub ids to take the image preprocessing / tokenizer from
    (PickScore's weights live apart from its processor). Missing weights raise ``UserError`` naming them.
    """
    from transformers import CLIPModel

    folder = resolve_folder(reward, name_or_path, files=["config.json"], patterns=MODEL_PATTERNS)
    _check_weights(reward, folder)
    model, info = CLIPModel.from_pretrained(
        str(folder), local_files_only=True, output_loading_info=True, dtype=dtype
    )
    _raise_on_missing(reward, folder, info)
    proc_folder = resolve_folder(reward, processor, patterns=AUX_PATTERNS) if processor else folder
    transform = image_transform_from(proc_folder, int(model.config.vision_config.image_size))
    tok = None
    if need_text:
        source = tokenizer or (folder if has_tokenizer_files(folder) else processor)
        if source is None:
            raise UserError(
                f"reward '{reward}': {folder} has no tokenizer files (vocab.json + merges.txt, or tokenizer.json); "
                "pass tokenizer=PATH"
            )
        tok = load_clip_tokenizer(reward, source, int(model.config.text_config.vocab_size))
    return ClipEncoder(model, tok, transform)
