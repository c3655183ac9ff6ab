"""Sampling a pretraining pipeline for its scores and sample grids, seeded exactly as ``visalign sample`` seeds it.

Image ``k`` of prompt ``p`` starts from the noise of ``image_seed(seed, p, k)`` with the config's sampler
(``sample.steps``, ``sample.guidance``), so every image here can be redrawn from the exported folder alone.
Scores are ShapesBench's strict / soft verdicts on the held-out test split.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from visalign.pretrain.config import PretrainConfig
from visalign.pretrain.generate import generate, image_seed, pipeline_kwargs


def have_verifier() -> bool:
    """Whether ShapesBench's verifier is installed."""
    return importlib.util.find_spec("visalign.eval.shapesbench") is not None


def shapesbench_scores(images: list[np.ndarray], metadata: list[dict]) -> dict[str, Any] | None:
    """ShapesBench scores, or None while the verifier is not installed."""
    try:
        from visalign.eval.shapesbench import score_images
    except ImportError:
        return None
    return score_images(images, metadata)


def sample_items(pipe: Any, cfg: PretrainConfig, items: list[dict], per_prompt: int, seed: int) -> np.ndarray:
    """``per_prompt`` images of each item's prompt (uint8, item by item), prompt ``p`` seeded by its position."""
    prompts = [m["prompt"] for m in items for _ in range(per_prompt)]
    seeds = [image_seed(seed, p, k) for p in range(len(items)) for k in range(per_prompt)]
    kwargs = pipeline_kwargs(cfg.family, cfg.sample.steps, cfg.sample.guidance, 0)
    return generate(pipe, prompts, seeds, kwargs, batch_size=cfg.sample.batch_size)


def sample_test_split(
    pipe: Any, cfg: PretrainConfig, images_per_prompt: int, seed: int
) -> tuple[Any, list[dict[str, Any]]]:
    """Images of every test prompt with the configured sampler, and the metadata of each image."""
    from visalign.worlds.shapes.prompts import load_split

    items = load_split("test")
    metas = [m for m in items for _ in range(images_per_prompt)]
    return sample_items(pipe, cfg, items, images_per_prompt, seed), metas


def score_test_split(pipe: Any, cfg: PretrainConfig, images_per_prompt: int, seed: int) -> dict[str, Any] | None:
    """Strict / soft ShapesBench scores on the test split with the configured sampler (None without the
    verifier): the periodic evaluation of ``eval.jsonl``."""
    images, metas = sample_test_split(pipe, cfg, images_per_prompt, seed)
    return shapesbench_scores(list(images), metas)


def final_evaluation(pipe: Any, cfg: PretrainConfig, images_per_prompt: int = 4, seed: int = 0) -> dict[str, Any]:
    """Test split, ``images_per_prompt`` per prompt, the card's sampler: images and ShapesBench results.

    The images are exactly those ``visalign sample --split test --images-per-prompt K --seed S`` writes.
    """
    from visalign.eval.shapesbench import score_images

    images, metas = sample_test_split(pipe, cfg, images_per_prompt, seed)
    results = score_images(list(images), metas)
    return {"images": images, "metadata": metas, "results": results, "images_per_prompt": images_per_prompt}


def save_grid(pipe: Any, cfg: PretrainConfig, path: Path, n_prompts: int, per_prompt: int = 4) -> None:
    """One row per test prompt (spread over the tags), ``per_prompt`` images each; prompts in a .txt beside it."""
    from PIL import Image

    from visalign.worlds.shapes.prompts import load_split

    items = load_split("test")
    pick = [items[round(i * (len(items) - 1) / max(1, n_prompts - 1))] for i in range(n_prompts)]
    images = sample_items(pipe, cfg, pick, per_prompt, cfg.seed)
    h, w = images.shape[1:3]
    sheet = np.full((n_prompts * (h + 2), per_prompt * (w + 2), 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, per_prompt)
        sheet[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = img
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    path.with_suffix(".txt").write_text("".join(m["prompt"] + "\n" for m in pick))
