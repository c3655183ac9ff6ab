"""``visalign methods``: every registered algorithm with its approach (how the reward reaches the model), the model
families it supports, its paper, recipes and status."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "methods"
HELP = "list every algorithm with its approach, model families, paper, recipes and status"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipes", default="recipes", help="recipes folder to search (default: recipes)")


def _recipes_for(folder: Path) -> dict[str, list[str]]:
    import yaml

    found: dict[str, list[str]] = {}
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        name = (data.get("algorithm") or {}).get("name", "flow_grpo")
        found.setdefault(name, []).append(path.name)
    return found


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from visalign.algorithms import registered_algorithms

    recipes = _recipes_for(Path(args.recipes))
    table = Table(title="algorithms")
    table.add_column("name", no_wrap=True)  # names are what users type: never truncated
    for col in ("approach", "model families", "needs", "paper", "recipes", "status"):
        table.add_column(col, overflow="fold")
    for name, cls in sorted(registered_algorithms().items()):
        families = ", ".join(cls.families) if cls.families else "any"
        table.add_row(name, cls.approach or "-", families, ", ".join(sorted(cls.needs)), cls.paper,
                      ", ".join(recipes.get(name, [])) or "-", getattr(cls, "status", "implemented, tested"))
    Console().print(table)
    return 0
