"""``visalign world``: render ShapesWorld ground truth, regenerate the prompt and question files.

visalign world render --split test --images-per-prompt 4 --out DIR
visalign world prompts [--out DIR] [--seed S]
visalign world questions [--out DIR] [--seed S] [--size N] [--train-per-type N] [--test-per-type N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from visalign.commands._args import int_at_least, output_folder, positive_int

NAME = "world"
HELP = "ShapesWorld: render ground truth, regenerate prompt and question files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="world_command", metavar="ACTION", required=True)
    render = sub.add_parser("render", help="render ground-truth images of a split in GenEval layout")
    render.add_argument(
        "--split", default="test", choices=("train", "test", "iid"), help="prompt split (default: test)"
    )
    render.add_argument("--prompts", type=Path, default=None, help="a JSONL prompt file instead of a split")
    render.add_argument("--images-per-prompt", type=positive_int, default=4, help="images per prompt (default: 4)")
    render.add_argument("--size", type=int_at_least(32), default=64, help="image size in pixels, >= 32 (default: 64)")
    render.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    render.add_argument("--out", type=output_folder, required=True, help="output folder")
    prompts = sub.add_parser("prompts", help="regenerate the train / test prompt files")
    prompts.add_argument(
        "--out", type=output_folder, default=None, help="output folder (default: the shipped data folder)"
    )
    prompts.add_argument("--seed", type=int, default=0, help="split seed (default: 0, the shipped files)")
    questions = sub.add_parser(
        "questions", help="regenerate the train / test visual-question files (qa_*.jsonl)"
    )
    questions.add_argument(
        "--out", type=output_folder, default=None, help="output folder (default: the shipped data folder)"
    )
    questions.add_argument("--seed", type=int, default=0, help="split seed (default: 0, the shipped files)")
    questions.add_argument(
        "--size", type=int_at_least(32), default=64, help="image size in pixels, >= 32 (default: 64)"
    )
    questions.add_argument("--train-per-type", type=positive_int, default=None,
                           help="train questions per type (default: the shipped 300)")  # fmt: skip
    questions.add_argument("--test-per-type", type=positive_int, default=None,
                           help="test questions per type (default: the shipped 50)")  # fmt: skip


def _render(args: argparse.Namespace) -> int:
    from rich.console import Console

    from visalign.worlds.shapes.groundtruth import render_folder
    from visalign.worlds.shapes.prompts import load_prompt_file, load_split

    metadatas = load_prompt_file(args.prompts) if args.prompts else load_split(args.split)
    sheet = render_folder(args.out, metadatas, args.images_per_prompt, args.size, args.seed, progress=True)
    n = len(metadatas) * args.images_per_prompt
    Console().print(
        f"wrote {n} images for {len(metadatas)} prompts to {args.out}\ncontact sheet: {sheet}", soft_wrap=True
    )
    return 0


def _prompts(args: argparse.Namespace) -> int:
    from visalign.worlds.shapes.prompts import DATA_DIR, write_splits

    paths = write_splits(args.out or DATA_DIR, seed=args.seed)
    for name, path in paths.items():
        n = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        print(f"{name}: {n} prompts -> {path}")
    return 0


def _questions(args: argparse.Namespace) -> int:
    from visalign.worlds.shapes.prompts import DATA_DIR
    from visalign.worlds.shapes.questions import write_qa_splits

    paths = write_qa_splits(args.out or DATA_DIR, seed=args.seed, size=args.size,
                            train_per_type=args.train_per_type, test_per_type=args.test_per_type)  # fmt: skip
    for name, path in paths.items():
        n = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        print(f"{name}: {n} questions -> {path}")
    return 0


_ACTIONS = {"render": _render, "prompts": _prompts, "questions": _questions}


def run(args: argparse.Namespace) -> int:
    return _ACTIONS[args.world_command](args)
