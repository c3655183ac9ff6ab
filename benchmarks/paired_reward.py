"""Paired comparison of a reward on sample folders drawn with the same prompts and seeds.

    visalign sample --model shapes-diffusion --split test --images-per-prompt 2 --seed 0 --out samples/base
    visalign export RUN_DIR --out exports/run --merged
    visalign sample --model exports/run --split test --images-per-prompt 2 --seed 0 --out samples/run
    python benchmarks/paired_reward.py samples/base samples/run [more folders ...] --reward jpeg_compressibility

For each folder after the first, prints one JSON line: the reward's mean on both sides, the mean +- standard
error of the per-image difference (image (i, j) of both folders starts from the same noise, so the difference
has far less spread than either score; ``visalign.eval.paired`` holds the formula), and the share of images
that improved.
"""

from __future__ import annotations

import argparse
import json

from visalign.errors import exit_on_user_error


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the reference folder (GenEval layout, visalign sample --out)")
    parser.add_argument("others", nargs="+", help="folders sampled with the same split, images per prompt and seed")
    parser.add_argument("--reward", default="shapes_soft", help="a registered reward (visalign rewards list)")
    args = parser.parse_args(argv)

    from visalign.eval.paired import folder_scores, paired  # after parsing: --help stays instant

    base = folder_scores(args.base, args.reward)
    rows = []
    for folder in args.others:
        row = {"folder": folder, "reward": args.reward, **paired(base, folder_scores(folder, args.reward))}
        rows.append(row)
        print(json.dumps(row))
    return rows


if __name__ == "__main__":
    exit_on_user_error(main)  # a missing or malformed folder: one line, no traceback
