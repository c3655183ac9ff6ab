"""A registered reward over every image of a GenEval-layout folder, one prompt at a time.

The statistics of a sample folder (``pass_at_k``, ``paired``) read their scores from here; they import this
module inside the functions that need it, so that their formulas stay importable without torch and the reward
registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from visalign.eval.geneval_layout import load_image, read_folder
from visalign.rewards._images import from_uint8
from visalign.rewards.base import build_reward


def prompt_scores(folder: str | Path, reward: str) -> Iterator[tuple[int, dict, torch.Tensor]]:
    """(prompt index, metadata, the reward of each of its images) for every prompt folder, in index order."""
    scorer = build_reward(reward)
    for index, metadata, paths in read_folder(folder):
        images = from_uint8([load_image(p) for p in paths])
        scores = scorer.score(images, [metadata["prompt"]] * len(paths), [metadata] * len(paths))
        yield index, metadata, scores[reward]
