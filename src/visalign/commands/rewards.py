"""``visalign rewards``: reward utilities, one sub-subcommand each (``list``; more register in ``ACTIONS``).

A new action is one entry in ``ACTIONS``: ``name -> (help, add_arguments, run)``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from visalign.commands._args import (
    fraction,
    nonnegative_float,
    nonnegative_int,
    output_folder,
    positive_float,
    positive_int,
)

NAME = "rewards"
HELP = "list rewards; train the learned ShapesWorld reward model"


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "-inf" if value < 0 else "inf"
    return f"{value:g}"


def reward_rows() -> list[tuple[str, str, str, str, str]]:
    """(name, differentiable, groupwise, range, summary) for every registered reward, sorted by name."""
    from visalign.rewards import registered_rewards

    rows = []
    for name, factory in sorted(registered_rewards().items()):
        lo, hi = getattr(factory, "output_range", (float("-inf"), float("inf")))
        summary = str(getattr(factory, "summary", "") or "")
        flags = ["yes" if getattr(factory, attr, False) else "no" for attr in ("differentiable", "groupwise")]
        if name == "composite":
            flags = ["if all parts", "if any part"]
        rows.append((name, flags[0], flags[1], f"[{_fmt(lo)}, {_fmt(hi)}]", summary))
    return rows


def _add_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plain", action="store_true", help="tab-separated output instead of a table")


def _run_list(args: argparse.Namespace) -> int:
    rows = reward_rows()
    if args.plain:
        for row in rows:
            print("\t".join(row))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="registered rewards")
    for column in ("name", "differentiable", "groupwise", "range", "what it scores"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    return 0


def _add_train_shapes_rm(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``train-shapes-rm`` (the data and loop live in ``visalign.rewards.shapes_rm_train``)."""
    parser.add_argument("--out", required=True, type=output_folder, help="folder to write (model.safetensors, config.json, README.md)")
    parser.add_argument("--synthetic", type=nonnegative_int, default=80000, help="rendered / mismatched / degraded pairs")
    parser.add_argument("--generated", action="append", metavar="DIR",
                        help="GenEval-layout folder of generated samples to train on (repeatable)")  # fmt: skip
    parser.add_argument("--eval-generated", action="append", metavar="DIR",
                        help="held-out GenEval-layout folder of generated samples (repeatable)")  # fmt: skip
    parser.add_argument("--holdout", type=fraction, default=0.2,
                        help="with --generated and no --eval-generated: fraction of its prompts held out")  # fmt: skip
    parser.add_argument("--model", help="a generator (diffusers folder or shipped alias) to sample from")
    parser.add_argument("--model-images", type=nonnegative_int, default=2, help="--model: images per train-split prompt")
    parser.add_argument("--model-eval-images", type=nonnegative_int, default=4,
                        help="--model: held-out images per test-split prompt")  # fmt: skip
    parser.add_argument("--eval-synthetic", type=nonnegative_int, default=3000, help="held-out pairs over test-split prompts")
    parser.add_argument("--steps", type=positive_int, default=8000)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--lr", type=positive_float, default=2e-3)
    parser.add_argument("--generated-weight", type=nonnegative_float, default=3.0,
                        help="sampling weight of a generated pair relative to a synthetic one")  # fmt: skip
    parser.add_argument("--init", help="a shapes_rm folder to start from (fine-tuning)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--no-card", action="store_true", help="do not write README.md")
    parser.add_argument("--card-note", default="", help="a paragraph to add to the model card (e.g. data provenance)")


def _run_train_shapes_rm(args: argparse.Namespace) -> int:
    from visalign.rewards.shapes_rm_train.command import run_command

    return run_command(args)


ACTIONS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "list": ("list registered rewards with their flags and output ranges", _add_list, _run_list),
    "train-shapes-rm": (
        "train the learned ShapesWorld reward model (shapes_rm) on verifier-labelled pairs",
        _add_train_shapes_rm,
        _run_train_shapes_rm,
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="rewards_action", metavar="ACTION")
    for name, (help_text, add, _run) in ACTIONS.items():
        add(sub.add_parser(name, help=help_text, description=help_text))


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "rewards_action", None)
    if action is None:
        print("usage: visalign rewards {" + ",".join(ACTIONS) + "} ...")
        return 1
    return ACTIONS[action][2](args)
