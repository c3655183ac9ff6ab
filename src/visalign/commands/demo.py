"""``visalign demo``: render a ShapesWorld sample sheet of the test split and score it.

A first look at the embedded world: ground-truth images of every test prompt go to ``runs/demo/``
in GenEval layout, the verifier scores them (about 1.0 by construction), and the contact sheet's
path is printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "demo"
HELP = "run the quickstart on the embedded ShapesWorld"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)"
    )
    parser.add_argument(
        "--images-per-prompt", type=int, default=2, help="images per test prompt (default: 2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from visalign.eval.shapesbench import format_table, score_folder
    from visalign.worlds.shapes.groundtruth import render_folder
    from visalign.worlds.shapes.prompts import load_split

    console = Console()
    folder = args.out / "shapes_test"
    metadatas = load_split("test")
    sheet = render_folder(folder, metadatas, args.images_per_prompt, seed=args.seed, progress=True)
    results = score_folder(folder, write=True, progress=True)
    console.print(format_table(results, title="ShapesWorld test split, ground truth"))
    console.print(f"sample sheet: {sheet}", soft_wrap=True)
    console.print(f"results: {folder / 'results.json'}", soft_wrap=True)
    return 0
