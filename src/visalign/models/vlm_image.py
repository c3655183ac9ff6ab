"""Qwen2-VL image preprocessing in NumPy and PIL: the pixels and grids that the real image processor makes.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL all read images with transformers' ``Qwen2VLImageProcessor``; its portable
backend ``Qwen2VLImageProcessorPil`` (``models/qwen2_vl/image_processing_pil_qwen2_vl.py``, with the helpers
of ``image_transforms.py`` and ``image_processing_backends.PilBackend``) needs no torchvision. This module
repeats its steps operation for operation, so that ``pixel_values`` agree bit for bit:

1. RGB conversion: alpha composited onto white, grey repeated to three channels (``convert_to_rgb``);
2. ``smart_resize``: the height and width rounded to multiples of ``patch_size * merge_size``, scaled into
   ``[min_pixels, max_pixels]`` with the aspect ratio kept, then a PIL resize of the uint8 image with the
   config's ``resample`` filter (bicubic by default; PIL returns a copy when the size already fits);
3. rescale: ``float64(x) * rescale_factor`` cast to float32 (``image_transforms.rescale``);
4. normalise: ``(x - mean) / std`` in float32 (``image_transforms.normalize``);
5. patchify: the frame repeated ``temporal_patch_size`` times and cut into ``[grid_h * grid_w,
   C * temporal_patch_size * patch_size * patch_size]`` rows, ordered by merge window (``merge_size`` x
   ``merge_size`` neighbouring patches are consecutive rows), with ``grid_thw = (1, grid_h, grid_w)``.

Where torchvision is installed, ``AutoImageProcessor`` picks the torchvision backend instead, whose resize
kernel and fused float32 rescale-and-normalise differ from these by rounding: close, not bitwise.

Inputs are PIL images, uint8 arrays ``[H, W]`` / ``[H, W, C]`` (C in 1, 3, 4) or uint8 torch tensors
``[C, H, W]``. Float images are refused: the real processor would rescale them twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch

# transformers.image_utils.OPENAI_CLIP_MEAN / OPENAI_CLIP_STD: the defaults of Qwen2VLImageProcessor
CLIP_MEAN: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, Qwen2VLImageProcessor.resample

# switches of the generic image processor that Qwen2-VL never turns on
_UNSUPPORTED_FLAGS = ("do_center_crop", "do_pad")

ImageLike = Any  # PIL.Image.Image | np.ndarray | torch.Tensor


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The ``(height, width)`` an image is resized to, as ``qwen2_vl.image_processing_qwen2_vl.smart_resize``.

    Both sides become multiples of ``factor`` (Python's ``round``, half to even), the area is brought into
    ``[min_pixels, max_pixels]`` and the aspect ratio is kept as closely as possible.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class ImageSettings:
    """The settings of ``preprocessor_config.json`` that shape ``pixel_values`` (defaults: the real class's)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    rescale_factor: float = 1 / 255
    resample: int = BICUBIC
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ImageSettings:
        """Read a ``preprocessor_config.json`` object the way ``Qwen2VLImageProcessor.__init__`` does.

        ``size = {"shortest_edge", "longest_edge"}`` (the format transformers 5 writes) gives the pixel
        bounds; top-level ``min_pixels`` / ``max_pixels`` (the format of the published Qwen checkpoints)
        override it. Raises ``ValueError`` naming the key for a value of the wrong kind.
        """
        config = dict(config)
        size = config.pop("size", None) or {}
        if not isinstance(size, dict) or not set(size) <= {"shortest_edge", "longest_edge"}:
            raise ValueError(f"[size] must hold 'shortest_edge' and 'longest_edge', got {size!r}")
        min_pixels = config.pop("min_pixels", None)
        max_pixels = config.pop("max_pixels", None)
        bounds = {
            "min_pixels": min_pixels if min_pixels is not None else size.get("shortest_edge", cls.min_pixels),
            "max_pixels": max_pixels if max_pixels is not None else size.get("longest_edge", cls.max_pixels),
        }
        for flag in _UNSUPPORTED_FLAGS:
            if config.pop(flag, False):
                raise ValueError(f"[{flag}] is not supported by Qwen2-VL image processing")
        kwargs: dict[str, Any] = {}
        for name in ("patch_size", "temporal_patch_size", "merge_size", "resample", "rescale_factor",
                     "do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):  # fmt: skip
            if name in config:
                kwargs[name] = config.pop(name)
        for name in ("image_mean", "image_std"):
            if name in config:
                value = config.pop(name)
                kwargs[name] = tuple(value) if isinstance(value, (list, tuple)) else (value,) * 3
        settings = cls(**bounds, **kwargs)  # other keys (image_processor_type, ...) do not change the pixels
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ``ValueError`` (naming the key) for settings the processor cannot run with."""
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"[{name}] must be a positive integer, got {value!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"[min_pixels] {self.min_pixels} is larger than [max_pixels] {self.max_pixels}")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
                raise ValueError(f"[{name}] must be three finite numbers, got {list(value)!r}")
        if any(v == 0 for v in self.image_std):
            raise ValueError(f"[image_std] must not hold 0, got {list(self.image_std)!r}")
        if not isinstance(self.rescale_factor, (int, float)) or not math.isfinite(self.rescale_factor):
            raise ValueError(f"[rescale_factor] must be a finite number, got {self.rescale_factor!r}")
        try:
            PIL.Image.Resampling(self.resample)
        except (ValueError, TypeError):
            raise ValueError(f"[resample] must be a PIL resampling filter (0-5), got {self.resample!r}") from None

    @property
    def factor(self) -> int:
        """Image sides are multiples of this many pixels: one merge window of patches."""
        return self.patch_size * self.merge_size

    def to_dict(self) -> dict[str, Any]:
        """The keys ``Qwen2VLImageProcessor.to_dict`` writes (transformers 5), for ``preprocessor_config.json``."""
        return {
            "do_convert_rgb": self.do_convert_rgb,
            "do_normalize": self.do_normalize,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "image_mean": list(self.image_mean),
            "image_processor_type": "Qwen2VLImageProcessor",
            "image_std": list(self.image_std),
            "merge_size": self.merge_size,
            "patch_size": self.patch_size,
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "size": {"longest_edge": self.max_pixels, "shortest_edge": self.min_pixels},
            "temporal_patch_size": self.temporal_patch_size,
        }

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(height, width)`` an image of this size is processed at."""
        if not self.do_resize:
            return height, width
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def num_patches(self, height: int, width: int) -> int:
        """Rows of ``pixel_values`` for one image (``get_number_of_image_patches``)."""
        h, w = self.output_size(height, width)
        return (h // self.patch_size) * (w // self.patch_size)

    def num_image_tokens(self, height: int, width: int) -> int:
        """``<|image_pad|>`` tokens one image of this size expands to."""
        return self.num_patches(height, width) // self.merge_size**2


def to_rgb_array(image: ImageLike, convert_rgb: bool = True) -> np.ndarray:
    """An image as a uint8 array ``[H, W, C]`` (RGB when ``convert_rgb``), as ``PilBackend.process_image``."""
    if isinstance(image, PIL.Image.Image):
        if not convert_rgb:
            array = np.array(image)
            return array[..., None] if array.ndim == 2 else array
        has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
        if has_alpha:
            rgba = image.convert("RGBA")
            background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.array(PIL.Image.alpha_composite(background, rgba).convert("RGB"))
        return np.array(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
        array = np.moveaxis(array, 0, -1) if array.ndim == 3 else array  # torch images are [C, H, W]
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise TypeError(f"an image must be a PIL image, a numpy array or a torch tensor, got {type(image).__name__}")
    if array.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8 (0-255), got {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"an image array must be [H, W], [H, W, C] or a [C, H, W] tensor, C in 1/3/4, got {image.shape}")
    if not convert_rgb:
        return array
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    if array.shape[-1] == 4:  # image_transforms.convert_to_rgb: alpha blended onto white, rounded
        alpha = array[..., 3:4] / 255
        return np.round(alpha * array[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return array


def _resize(image: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    """PIL resize of a uint8 ``[H, W, C]`` array (``image_transforms.resize``)."""
    pil = PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    out = np.array(pil.resize((width, height), resample=resample))
    return out[..., None] if out.ndim == 2 else out


def _patchify(image: np.ndarray, settings: ImageSettings) -> tuple[np.ndarray, int, int]:
    """``Qwen2VLImageProcessorPil.patchify``: ``[C, H, W]`` float32 -> ``[grid_h * grid_w, patch_dim]``."""
    p, m, t = settings.patch_size, settings.merge_size, settings.temporal_patch_size
    channel, height, width = image.shape
    if height % settings.factor or width % settings.factor:
        raise ValueError(
            f"an image of {height}x{width} px is not a multiple of patch_size * merge_size = {settings.factor} "
            "(turn do_resize on, or pass images of that size)"
        )
    grid_h, grid_w = height // p, width // p
    patches = image.reshape(channel, grid_h // m, m, p, grid_w // m, m, p)
    patches = np.transpose(patches, (1, 4, 2, 5, 0, 3, 6))  # (gh, gw, mh, mw, C, ph, pw)
    patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], t, *patches.shape[5:]))
    return patches.reshape(grid_h * grid_w, channel * t * p * p), grid_h, grid_w


def process_image(image: ImageLike, settings: ImageSettings) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One image -> (patch rows ``[n, C * t * p * p]`` float32, ``(1, grid_h, grid_w)``)."""
    array = to_rgb_array(image, settings.do_convert_rgb)
    if settings.do_resize:
        height, width = settings.output_size(array.shape[0], array.shape[1])
        array = _resize(array, height, width, settings.resample)
    chw: np.ndarray = np.moveaxis(array, -1, 0)
    if settings.do_rescale:
        chw = (chw.astype(np.float64) * settings.rescale_factor).astype(np.float32)
    if settings.do_normalize:
        chw = chw if np.issubdtype(chw.dtype, np.floating) else chw.astype(np.float32)
        mean = np.array(settings.image_mean, dtype=chw.dtype)[:, None, None]
        std = np.array(settings.image_std, dtype=chw.dtype)[:, None, None]
        chw = (chw - mean) / std
    patches, grid_h, grid_w = _patchify(np.asarray(chw, dtype=np.float32), settings)
    return patches, (1, grid_h, grid_w)


def process_images(images: Sequence[ImageLike], settings: ImageSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """``pixel_values [sum of patches, patch_dim]`` (float32) and ``image_grid_thw [n_images, 3]`` (int64)."""
    if len(images) == 0:
        raise ValueError("no images to process")
    rows, grids = zip(*(process_image(image, settings) for image in images), strict=True)
    pixel_values = torch.from_numpy(np.ascontiguousarray(np.concatenate(rows, axis=0)))
    return pixel_values, torch.tensor(grids, dtype=torch.int64)
