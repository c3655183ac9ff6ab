"""The reward server's wire format (JSON over HTTP), shared by ``server`` and the ``remote`` reward.

``POST /score`` (header ``Authorization: Bearer <token>`` when the server has a token)::

    {"images":   ["<base64 PNG>", ...],          # B images, RGB, all the same size
     "prompts":  ["a photo of a cat", ...],      # B strings
     "metadata": [{...}, ...]}                   # optional, B JSON objects

Response ``200``::

    {"reward": "<served reward name>", "scores": {"<key>": [B floats], ...}}   # first key = main score

Errors carry ``{"error": "<message>"}``: 400 malformed request, 401 missing/wrong token, 404 unknown path,
411 no Content-Length, 413 body or batch too large, 500 the reward failed, 503 shutting down.
``GET /health`` (no token needed): ``{"status": "ok", "reward": ..., "differentiable": ..., "groupwise": ...,
"output_range": [lo, hi], "requests": n, "batches": m}``.

Images travel as 8-bit PNG, so the server scores the uint8-quantised image (exactly what a saved sample is).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from typing import Any

import torch

from visalign.rewards._images import decode_image, from_uint8, png_bytes, to_uint8


class WireError(ValueError):
    """A request or response that does not follow the wire format."""


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
    payload: Any, max_images: int
) -> tuple[torch.Tensor, list[str], list[dict[str, Any]]]:
    """Validate and decode a ``/score`` body; raises ``WireError`` with a message fit for a 400 reply."""
    if not isinstance(payload, dict):
        raise WireError("body must be a JSON object")
    images, prompts = payload.get("images"), payload.get("prompts")
    metadata = payload.get("metadata")
    if not isinstance(images, list) or not images:
        raise WireError("'images' must be a non-empty list of base64 PNG strings")
    if len(images) > max_images:
        raise WireError(f"too many images: {len(images)} > {max_images}")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise WireError("'prompts' must be a list of strings")
    if len(prompts) != len(images):
        raise WireError(f"{len(images)} images but {len(prompts)} prompts")
    if metadata is None:
        metadata = [{} for _ in images]
    if not isinstance(metadata, list) or len(metadata) != len(images) or not all(isinstance(m, dict) for m in metadata):
        raise WireError("'metadata' must be a list of objects, one per image")
    arrays = []
    for i, item in enumerate(images):
        if not isinstance(item, str):
            raise WireError(f"images[{i}] is not a string")
        try:
            arrays.append(decode_image(base64.b64decode(item, validate=True)))
        except (binascii.Error, ValueError, OSError) as err:
            raise WireError(f"images[{i}] is not a base64-encoded image: {err}") from err
    if len({a.shape for a in arrays}) != 1:
        raise WireError("all images of a request must have the same size")
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
