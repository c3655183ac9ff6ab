"""``visalign eval DIR``: score a GenEval-layout folder with the ShapesWorld verifier.

Prints per-tag strict accuracy, the overall score (unweighted mean over tags, GenEval's rule) and
the mean soft score, and writes ``DIR/results.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "eval"
HELP = "score a folder of images in GenEval layout with the ShapesWorld verifier"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folder", type=Path, help="folder in GenEval layout (NNNNN/metadata.jsonl, NNNNN/samples/*.png)"
    )
    parser.add_argument("--no-write", action="store_true", help="do not write DIR/results.json")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from visalign.eval.shapesbench import RESULTS, format_table, score_folder

    results = score_folder(args.folder, write=not args.no_write, progress=True)
    console = Console()
    console.print(format_table(results, title=f"ShapesBench: {args.folder}"))
    if not args.no_write:
        console.print(f"results: {args.folder / RESULTS}", soft_wrap=True)
    return 0
