"""Generated images as training and held-out pairs: read from sample folders, or sampled from a generator.

Each generated image is scored against its own prompt and once against another prompt of the same tag (the
verifier labels both pairs). ``split_generated`` holds out a fraction of the prompts of a generated set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visalign.errors import UserError
from visalign.rewards.shapes_rm_train.pairs import PairSet, by_tag, label
from visalign.seeding import numpy_rng

# (name, uint8 images [N, S, S, 3], their prompt metadata): one source of generated images
Group = tuple[str, np.ndarray, list[dict]]


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def read_generated(folders: Sequence[str | Path], size: int = 64) -> tuple[np.ndarray, list[dict]]:
    """Every sample of GenEval-layout ``folders`` (``visalign sample`` output) as uint8 images + metadata."""
    from visalign.eval.geneval_layout import load_image, read_folder

    images, metas = [], []
    for folder in folders:
        for _, md, paths in read_folder(folder):
            if "include" not in md and "text" not in md:
                raise UserError(
                    f"{folder}: prompt {md.get('prompt')!r} has no ShapesWorld metadata to verify against"
                )
            for p in paths:
                im = load_image(p)
                images.append(im if im.shape[:2] == (size, size) else _resized(im, size))
                metas.append(md)
    if not images:
        return np.zeros((0, size, size, 3), np.uint8), []
    return np.stack(images), metas


def sample_generated(
    model: str, prompts: list[dict], images_per_prompt: int, seed: int, size: int = 64, progress: Any = None
) -> tuple[np.ndarray, list[dict]]:
    """``images_per_prompt`` images per prompt from a diffusers folder or shipped alias (with its card's
    sampler settings)."""
    from visalign.models.loading import load_pipeline, sampler_defaults
    from visalign.pretrain.generate import generate, image_seed, pipeline_kwargs

    family, pipe = load_pipeline(model)
    d = sampler_defaults(model)
    kwargs = pipeline_kwargs(
        family, d.get("num_inference_steps"), d.get("guidance_scale"), d.get("max_sequence_length")
    )
    k = images_per_prompt
    per_call = max(1, 32 // k)
    out, metas = [], []
    task = progress.add_task(f"sample {Path(str(model)).name}", total=len(prompts) * k) if progress else None
    for start in range(0, len(prompts), per_call):
        chunk = prompts[start : start + per_call]
        texts = [md["prompt"] for md in chunk for _ in range(k)]
        seeds = [image_seed(seed, start + i, j) for i in range(len(chunk)) for j in range(k)]
        images = generate(pipe, texts, seeds, kwargs, batch_size=len(texts))
        if images.shape[1:3] != (size, size):
            images = np.stack([_resized(im, size) for im in images])
        out.append(images)
        metas += [md for md in chunk for _ in range(k)]
        if progress is not None:
            progress.update(task, advance=len(texts))
    return np.concatenate(out), metas


def own_prompt_pairs(images: np.ndarray, metas: list[dict]) -> PairSet:
    """Generated images against the prompts they were sampled for."""
    return label(images, metas, ["generated"] * len(metas))


def other_prompt_pairs(images: np.ndarray, metas: list[dict], prompts: list[dict], seed: int) -> PairSet:
    """Generated images each against another prompt of ``prompts`` with the same tag (any, if it has none)."""
    rng = numpy_rng(seed)
    tags = by_tag(prompts)
    other = []
    for md in metas:
        tag = md.get("tag", "")
        same_tag = [prompts[i] for i in tags[tag]] if tag in tags else prompts
        pool = [m for m in same_tag if m["prompt"] != md["prompt"]] or prompts
        other.append(pool[int(rng.integers(len(pool)))])
    return label(images, other, ["generated"] * len(metas))


def generated_pairs(images: np.ndarray, metas: list[dict], prompts: list[dict], seed: int) -> PairSet:
    """Generated images against their own prompt, and each once against another prompt of the same tag."""
    if not len(metas):
        return PairSet.empty()
    return PairSet.concat([own_prompt_pairs(images, metas), other_prompt_pairs(images, metas, prompts, seed)])


def split_generated(
    images: np.ndarray, metas: list[dict], frac: float, seed: int
) -> tuple[tuple[np.ndarray, list[dict]], tuple[np.ndarray, list[dict]]]:
    """(kept, held out): a fraction ``frac`` of the prompts (all their images) of a generated set held out."""
    prompts = sorted({m["prompt"] for m in metas})
    rng = numpy_rng(seed)
    held = set(rng.permutation(prompts)[: int(round(frac * len(prompts)))].tolist())
    tr = [i for i, m in enumerate(metas) if m["prompt"] not in held]
    ev = [i for i, m in enumerate(metas) if m["prompt"] in held]
    return (images[tr], [metas[i] for i in tr]), (images[ev], [metas[i] for i in ev])
