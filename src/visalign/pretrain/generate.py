"""Sample a diffusers pipeline with one seeded ``torch.Generator`` per image.

Image ``k`` of prompt ``p`` under run seed ``s`` starts from the noise of ``image_seed(s, p, k)``, whatever the
batch it is drawn in, so a folder of samples can be regenerated image by image with the pipeline alone::

    pipe(prompt, generator=torch.Generator().manual_seed(image_seed(s, p, k)), ...)

where ``image_seed(s, p, k)`` is ``visalign.seeding.seed_from_ints(s, p, k)``.

``visalign sample``, the pretraining grids and evaluations, and the benchmarks all sample through here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from visalign.seeding import seed_from_ints, torch_generators


def image_seed(seed: int, prompt_index: int, image_index: int) -> int:
    """The noise seed of image ``image_index`` of prompt ``prompt_index`` in a run seeded ``seed``."""
    return seed_from_ints(seed, prompt_index, image_index)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """``[N, H, W, 3]`` floats in [0, 1] -> uint8, rounding exactly as diffusers' ``numpy_to_pil``."""
    return (images * 255).round().astype("uint8")


def pipeline_kwargs(
    family: str,
    steps: int | None = None,
    guidance: float | None = None,
    max_sequence_length: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments for a pipeline call; ``None`` leaves the pipeline's own default."""
    kwargs: dict[str, Any] = {}
    if steps is not None:
        kwargs["num_inference_steps"] = int(steps)
    if guidance is not None:
        kwargs["guidance_scale"] = float(guidance)
    if family == "flow" and max_sequence_length is not None:
        kwargs["max_sequence_length"] = int(max_sequence_length)
    return kwargs


@torch.no_grad()
def generate(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    kwargs: dict[str, Any],
    batch_size: int = 32,
) -> np.ndarray:
    """One image per (prompt, seed) pair as uint8 ``[N, H, W, 3]``, in chunks of ``batch_size``."""
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt is needed")
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        gens = torch_generators(seeds[start : start + batch_size])
        images = pipe(prompt=chunk, generator=gens, output_type="np", **kwargs).images
        out.append(to_uint8(np.asarray(images)))
    if not out:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    return np.concatenate(out)
