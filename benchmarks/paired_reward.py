"""Paired comparison of a reward on two sample folders made with the same prompts and seeds.

    visalign sample --model shapes-diffusion --split test --images-per-prompt 2 --seed 0 --out samples/base
    visalign export RUN_DIR --out exports/run --merged
    visalign sample --model exports/run --split test --images-per-prompt 2 --seed 0 --out samples/run
    python benchmarks/paired_reward.py samples/base samples/run [more folders ...] --reward jpeg_compressibility

``visalign sample`` seeds image j of prompt i the same way for every model, so image (i, j) of two folders
starts from the same noise and differs only by the weights. The per-image difference of the reward then has
far less spread than either folder's scores, and its mean +- standard error says whether a change is real.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from visalign.eval.geneval_layout import load_image, read_folder
from visalign.rewards._images import from_uint8
from visalign.rewards.base import build_reward


def folder_scores(folder: str, reward_name: str) -> dict[tuple[int, int], float]:
    """The reward of every image, keyed by (prompt index, image index)."""
    reward = build_reward(reward_name)
    out: dict[tuple[int, int], float] = {}
    for index, metadata, paths in read_folder(folder):
        images = from_uint8([load_image(p) for p in paths])
        scores = reward.score(images, [metadata["prompt"]] * len(paths), [metadata] * len(paths))
        for j, value in enumerate(scores[reward_name].tolist()):
            out[(index, j)] = float(value)
    return out


def paired(base: dict[tuple[int, int], float], other: dict[tuple[int, int], float]) -> dict[str, float]:
    keys = sorted(base.keys() & other.keys())
    if len(keys) < 2:
        raise SystemExit(
            "error: the folders share fewer than two (prompt, image) pairs; sample both with the same split"
        )
    diff = torch.tensor([other[k] - base[k] for k in keys], dtype=torch.float64)
    return {
        "pairs": len(keys),
        "base_mean": sum(base[k] for k in keys) / len(keys),
        "other_mean": sum(other[k] for k in keys) / len(keys),
        "diff_mean": float(diff.mean()),
        "diff_se": float(diff.std() / math.sqrt(len(keys))),
        "share_improved": float((diff > 0).double().mean()),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("others", nargs="+")
    parser.add_argument("--reward", default="shapes_soft", help="a registered reward (visalign rewards list)")
    args = parser.parse_args(argv)
    base = folder_scores(args.base, args.reward)
    rows = []
    for folder in args.others:
        row = {"folder": folder, "reward": args.reward, **paired(base, folder_scores(folder, args.reward))}
        rows.append(row)
        print(json.dumps(row))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
