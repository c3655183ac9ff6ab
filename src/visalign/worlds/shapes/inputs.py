"""Turning whatever a generator or a user hands us into float32 RGB batches.

Accepted: a PIL image, a uint8 (H, W, 3) array, a float (H, W, 3) array in [0, 1], a float torch
tensor (3, H, W) or (B, 3, H, W) in [0, 1], a uint8 (B, H, W, 3) array, or a list of any of these.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image


def _one(image: Any) -> np.ndarray:
    """One image as float32 (H, W, 3) in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if hasattr(image, "detach"):  # a torch tensor, without importing torch
        arr = image.detach().to("cpu").float().numpy()
        if arr.ndim == 3 and arr.shape[0] in (1, 3):
            arr = arr.transpose(1, 2, 0)  # tensors are channels-first by convention
        return _from_array(arr, scale=1.0)
    arr = np.asarray(image)
    return _from_array(arr, scale=255.0 if arr.dtype == np.uint8 else 1.0)


def _from_array(arr: np.ndarray, scale: float) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image (H, W, 3) / (3, H, W), got shape {arr.shape}")
    arr = arr[..., :3].astype(np.float32) / scale
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.clip(arr, 0.0, 1.0)


def as_image_list(images: Any) -> list[np.ndarray]:
    """A batch (tensor BCHW, array BHWC, or a list) as a list of float32 (H, W, 3) arrays."""
    if hasattr(images, "detach") and images.ndim == 4:
        arr = images.detach().to("cpu").float().numpy()
        if arr.shape[1] in (1, 3):
            arr = arr.transpose(0, 2, 3, 1)
        return [_from_array(a, 1.0) for a in arr]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        scale = 255.0 if images.dtype == np.uint8 else 1.0
        if images.shape[-1] not in (1, 3, 4) and images.shape[1] in (1, 3):
            images = images.transpose(0, 2, 3, 1)
        return [_from_array(a, scale) for a in images]
    return [_one(im) for im in images]
