"""``visalign demo``: the quickstart — Flow-GRPO on the shipped ``shapes-flow`` base with the ShapesWorld reward.

Runs ``recipes/quickstart.yaml`` (about 15 minutes on 2 CPU cores; extra ``section.key=value`` overrides are
passed through) and ends by printing the held-out scores and where the HTML report is.
``visalign demo --world`` instead renders ground-truth images of the test split and scores them (a quick look at
the embedded world; about 1.0 by construction).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from visalign.commands._args import output_folder, positive_int

NAME = "demo"
HELP = "run the quickstart on the embedded ShapesWorld"

QUICKSTART = Path("recipes/quickstart.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", action="store_true", help="only render and score ShapesWorld ground truth")
    parser.add_argument("--recipe", type=Path, default=QUICKSTART, help=f"recipe (default: {QUICKSTART})")
    parser.add_argument(
        "--out", type=output_folder, default=Path("runs/demo"), help="output folder for --world (default: runs/demo)"
    )
    parser.add_argument("--images-per-prompt", type=positive_int, default=2, help="--world: images per test prompt")
    parser.add_argument("--seed", type=int, default=0, help="--world: seed (default: 0)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for the recipe, e.g. train.iterations=20")


def run(args: argparse.Namespace) -> int:
    if args.world:
        return _world_sheet(args)
    from visalign.commands import train

    return train.run(argparse.Namespace(config=str(args.recipe), resume=False, overrides=list(args.overrides)))


def _world_sheet(args: argparse.Namespace) -> int:
    from rich.console import Console

    from visalign.eval.shapesbench import RESULTS, format_table, score_folder
    from visalign.worlds.shapes.groundtruth import render_folder
    from visalign.worlds.shapes.prompts import load_split

    console = Console()
    folder = args.out / "shapes_test"
    metadatas = load_split("test")
    sheet = render_folder(folder, metadatas, args.images_per_prompt, seed=args.seed, progress=True)
    results = score_folder(folder, write=True, progress=True)
    console.print(format_table(results, title="ShapesWorld test split, ground truth"))
    console.print(f"sample sheet: {sheet}", soft_wrap=True)
    console.print(f"results: {folder / RESULTS}", soft_wrap=True)
    return 0
