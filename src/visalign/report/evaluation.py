"""Held-out evaluation during training: sample the test prompts with fixed seeds, score, write results.

ShapesWorld prompts (GenEval-style metadata) are scored by ShapesBench (``visalign.eval.shapesbench``:
overall strict accuracy, per tag, soft) and, under ``rewards``, by the run's (non-groupwise) rewards; other
prompts by the run's rewards only (mean of each). Writes
``OUT/results.json`` and, for the report's before/after grids, the first images of a few prompts per tag
under ``OUT/samples/``.

``evaluate_generator`` is the trainer's call (the config's eval sampler and prompts); ``eval_row`` / ``headline`` /
``read_eval`` are what the metrics log and ``summary.json`` keep of a result.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from visalign.seeding import sample_seed

if TYPE_CHECKING:
    from visalign.config import Config
    from visalign.models.base import Generator


def _save_png(image: torch.Tensor, path: Path) -> None:
    arr = (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)


def _reward_means(
    rewards: Sequence[tuple[Any, float]], images: torch.Tensor, prompts: list[str], metadatas: list[dict[str, Any]]
) -> dict[str, float]:
    """Each reward's name -> the mean of its main score over the images (its first key)."""
    return {
        getattr(reward, "name", "reward"): float(next(iter(reward(images, prompts, metadatas).values())).mean())
        for reward, _weight in rewards
    }


def _save_grid_samples(
    images: torch.Tensor, metadatas: list[dict[str, Any]], seeds: list[int], images_per_prompt: int,
    grid_per_tag: int, samples: Path,
) -> None:  # fmt: skip
    """The first image of the first ``grid_per_tag`` prompts of each tag, and ``index.json`` naming them."""
    samples.mkdir(parents=True, exist_ok=True)
    picked: dict[str, list[int]] = {}
    for i in range(0, len(metadatas), images_per_prompt):
        tag = metadatas[i].get("tag", "all")
        if len(picked.setdefault(tag, [])) < grid_per_tag:
            picked[tag].append(i)
    index = []
    for tag, rows in picked.items():
        for i in rows:
            name = f"{i:04d}.png"
            _save_png(images[i], samples / name)
            index.append({"file": name, "tag": tag, "prompt": metadatas[i]["prompt"], "seed": seeds[i]})
    (samples / "index.json").write_text(json.dumps(index, indent=1))


def evaluate_prompts(
    sample: Callable[[list[str], list[int]], torch.Tensor],
    items: Sequence[dict[str, Any]],
    out_dir: str | Path,
    images_per_prompt: int = 1,
    seed: int = 1234,
    rewards: Sequence[tuple[Any, float]] = (),
    grid_per_tag: int = 2,
) -> dict[str, Any]:
    """Sample ``images_per_prompt`` images of every item from fixed seeds, score them, write ``out_dir``.

    ``sample(prompts, seeds)`` returns a float (B, 3, H, W) batch in [0, 1]; ``rewards`` are (reward, weight)
    pairs (the weights are not used: each reward is reported on its own). Returns the results dict.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    metadatas = [m for m in items for _ in range(images_per_prompt)]
    prompts = [m["prompt"] for m in metadatas]
    seeds = [sample_seed(seed, 0, 0, i, stream="eval") for i in range(len(prompts))]
    images = sample(prompts, seeds)
    if all("include" in m or "tag" in m for m in metadatas):
        from visalign.eval.shapesbench import score_images

        result = dict(score_images(images, metadatas))
        # the run's own rewards on the same held-out images: a learned reward climbing while the verifier
        # does not is reward hacking, visible as the gap between the two
        pointwise = [(r, w) for r, w in rewards if not getattr(r, "groupwise", False)]
        result["rewards"] = _reward_means(pointwise, images, prompts, metadatas)
    else:
        result = _reward_means(rewards, images, prompts, metadatas)
        result["overall"] = next(iter(result.values()))
        result.setdefault("per_tag", {})
    result["num_images"] = len(prompts)
    result["seconds"] = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_grid_samples(images, metadatas, seeds, images_per_prompt, grid_per_tag, out_dir / "samples")
    (out_dir / "results.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def evaluate_generator(generator: Generator, cfg: Config, items: Sequence[dict[str, Any]], out_dir: str | Path,
                       rewards: Sequence[tuple[Any, float]] = ()) -> dict[str, Any]:
    """A training run's held-out evaluation of ``generator``: the family's deterministic sampler over
    ``eval.num_steps`` steps with the eval guidance, on ``items`` (the first ``eval.max_prompts`` of them taken
    round-robin over tags), ``eval.images_per_prompt`` images each; see ``evaluate_prompts``."""
    from visalign.prompts import stratified
    from visalign.sampling.samplers import sample_deterministic

    ecfg = cfg.eval
    guidance = ecfg.guidance_scale if ecfg.guidance_scale is not None else cfg.sampling.guidance_scale
    schedule = generator.schedule(ecfg.num_steps)
    kernel = generator.make_kernel(generator.deterministic_kernel, 0.0, schedule)
    chosen = stratified(list(items), ecfg.max_prompts) if ecfg.max_prompts else items

    def sample(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        return sample_deterministic(generator, schedule, kernel, prompts, seeds, guidance, ecfg.batch_size)

    with torch.no_grad():
        return evaluate_prompts(sample, chosen, out_dir, ecfg.images_per_prompt, ecfg.seed, rewards=rewards,
                                grid_per_tag=cfg.log.grid_per_tag)


# ---- what the metrics log and the run summary keep of an evaluation ------------------------------------------


def eval_row(result: dict[str, Any]) -> dict[str, Any]:
    """Metrics-log entries of an evaluation: ``eval/overall``, ``eval/tag/<tag>``, ``eval/soft``."""
    row = {"eval/overall": result["overall"]}
    for k, v in (result.get("per_tag") or {}).items():
        row[f"eval/tag/{k}"] = v
    if "soft" in result:
        row["eval/soft"] = result["soft"]
    return row


def headline(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The summary's view of an evaluation: overall, per tag, soft, held out."""
    if result is None:
        return None
    return {k: result[k] for k in ("overall", "per_tag", "soft", "held_out") if k in result}


def read_eval(run_dir: Path, iteration: int, second: bool = False) -> dict[str, Any] | None:
    """The results a run wrote for its evaluation after ``iteration`` (``second``: of ``eval.second_split``;
    None if there are none)."""
    folder = run_dir / "evals" / f"iter_{iteration:04d}"
    path = (folder / "second" if second else folder) / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None
