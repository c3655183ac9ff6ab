"""The reward server's wire format (JSON over HTTP), shared by ``server`` and the ``remote`` reward.

``POST /score`` (header ``Authorization: Bearer <token>`` when the server has a token)::

    {"images":   ["<base64 PNG>", ...],          # B images, RGB, all the same size
     "prompts":  ["a photo of a cat", ...],      # B strings
     "metadata": [{...}, ...]}                   # optional, B JSON objects

Response ``200``::

    {"reward": "<served reward name>", "scores": {"<key>": [B floats], ...}}   # first key = main score

Errors carry ``{"error": "<message>"}``: 400 malformed request, 401 missing/wrong token, 404 unknown path,
408 request not received in time, 411 no Content-Length, 413 body, batch or pixels over a limit, 431
headers too large, 500 the reward failed, 503 too many connections or shutting down.
``GET /health`` (no token needed): ``{"status": "ok", "reward": ..., "differentiable": ..., "groupwise": ...,
"output_range": [lo, hi], "requests": n, "batches": m}``.

Images travel as 8-bit PNG, so the server scores the uint8-quantised image (exactly what a saved sample is).
Only PNG is accepted: the server reads each image's size from its IHDR header to enforce its pixel limits
before decoding.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from visalign.rewards._images import from_uint8, png_bytes, to_uint8


class WireError(ValueError):
    """A request or response that does not follow the wire format; ``status`` is the HTTP reply it earns."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# Defaults of the server's pixel limits: a 4096x4096 image, and 64 images of 1024x1024 per request
# (as float32 ``[B, 3, H, W]`` that request is 0.8 GB, which is what the limit is about: the body limit
# bounds bytes, and a PNG of one colour compresses about 1000:1).
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_REQUEST_PIXELS = 64 * 1024 * 1024

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# signature (8) + IHDR length (4) + "IHDR" (4) + width (4) + height (4) = 24 bytes = 32 base64 characters
_HEADER_B64_CHARS = 32


def png_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from a PNG's IHDR chunk (its first 24 bytes), read without decoding anything."""
    if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG (the wire format carries PNG images)")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise ValueError(f"PNG header claims an empty {width}x{height} image")
    return width, height


def _decode_png(data: bytes, size: tuple[int, int]) -> np.ndarray:
    # formats=["PNG"]: the size was checked from a PNG header, so no other decoder may take the bytes.
    with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
        if img.size != size:  # cannot happen for a PNG (same header), but the limit rests on it
            raise ValueError(f"decoder reports {img.size[0]}x{img.size[1]}, header {size[0]}x{size[1]}")
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def encode_request(
    images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict[str, Any]] | None
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "images": [base64.b64encode(png_bytes(a)).decode("ascii") for a in to_uint8(images)],
        "prompts": list(prompts),
    }
    if metadata is not None:
        payload["metadata"] = [dict(m) for m in metadata]
    return payload


def decode_request(
    payload: Any,
    max_images: int,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    max_request_pixels: int = MAX_REQUEST_PIXELS,
) -> tuple[torch.Tensor, list[str], list[dict[str, Any]]]:
    """Validate and decode a ``/score`` body; raises ``WireError`` (status 400, or 413 over a limit).

    Every image's size is read from its PNG header and checked against ``max_image_pixels`` and (summed)
    ``max_request_pixels`` before any image is decoded, so what decoding allocates is bounded by the
    limits and not by how well the bytes compress.
    """
    if not isinstance(payload, dict):
        raise WireError("body must be a JSON object")
    images, prompts = payload.get("images"), payload.get("prompts")
    metadata = payload.get("metadata")
    if not isinstance(images, list) or not images:
        raise WireError("'images' must be a non-empty list of base64 PNG strings")
    if len(images) > max_images:
        raise WireError(f"too many images: {len(images)} > {max_images} (the server's limit per request)", 413)
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise WireError("'prompts' must be a list of strings")
    if len(prompts) != len(images):
        raise WireError(f"{len(images)} images but {len(prompts)} prompts")
    if metadata is None:
        metadata = [{} for _ in images]
    if not isinstance(metadata, list) or len(metadata) != len(images) or not all(isinstance(m, dict) for m in metadata):
        raise WireError("'metadata' must be a list of objects, one per image")
    sizes = []
    for i, item in enumerate(images):
        if not isinstance(item, str):
            raise WireError(f"images[{i}] is not a string")
        try:
            width, height = png_size(base64.b64decode(item[:_HEADER_B64_CHARS], validate=True))
        except (binascii.Error, ValueError) as err:
            raise WireError(f"images[{i}] is not a base64-encoded PNG: {err}") from err
        if width * height > max_image_pixels:
            raise WireError(f"images[{i}] is {width}x{height} = {width * height:,} pixels, over the server's limit "
                            f"of {max_image_pixels:,} pixels per image", 413)  # fmt: skip
        sizes.append((width, height))
    total = sum(w * h for w, h in sizes)
    if total > max_request_pixels:
        raise WireError(f"{len(images)} images of {total:,} pixels in all, over the server's limit of "
                        f"{max_request_pixels:,} pixels per request", 413)  # fmt: skip
    if len(set(sizes)) != 1:
        raise WireError("all images of a request must have the same size")
    arrays = []
    for i, (item, size) in enumerate(zip(images, sizes, strict=True)):
        try:
            arrays.append(_decode_png(base64.b64decode(item, validate=True), size))
        except Image.DecompressionBombError as err:  # PIL's own limit, when the server's are set above it
            raise WireError(f"images[{i}] is {size[0]}x{size[1]}: {err}", 413) from err
        except MemoryError:  # the server's limits are too high for this machine: not the client's fault
            raise
        except Exception as err:  # noqa: BLE001 - whatever the decoder makes of bad bytes, it is a bad request
            raise WireError(f"images[{i}] is not a valid base64 PNG: {type(err).__name__}: {err}") from err
    return from_uint8(arrays), prompts, metadata


def encode_scores(reward: str, scores: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"reward": reward, "scores": {k: [float(x) for x in v.detach().cpu().flatten()] for k, v in scores.items()}}


def decode_scores(payload: Any, batch: int) -> dict[str, torch.Tensor]:
    """Validate a ``/score`` response: every key has ``batch`` finite floats; raises ``WireError`` otherwise."""
    if not isinstance(payload, dict) or not isinstance(payload.get("scores"), dict) or not payload["scores"]:
        raise WireError("response has no 'scores' object")
    out = {}
    for key, values in payload["scores"].items():
        if not isinstance(values, list) or len(values) != batch:
            raise WireError(f"score '{key}' is not a list of {batch} numbers")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise WireError(f"score '{key}' holds non-finite or non-numeric values")
        out[str(key)] = torch.tensor(values, dtype=torch.float32)
    return out
