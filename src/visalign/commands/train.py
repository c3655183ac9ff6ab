"""``visalign train --config recipes/<name>.yaml [section.key=value ...]``: RL post-training from a recipe.

Works under ``accelerate launch`` / ``torchrun`` (one process per device; CPU processes use gloo).
"""

from __future__ import annotations

import argparse

NAME = "train"
HELP = "RL post-training from a recipe"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="recipe YAML (e.g. recipes/quickstart.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue the run in run_dir from its latest checkpoint")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 data.group_size=8")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from visalign.config import load_train_config
    from visalign.trainer import Trainer

    overrides = list(args.overrides) + (["resume=auto"] if args.resume else [])
    cfg = load_train_config(args.config, overrides)
    trainer = Trainer(cfg)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    if trainer.is_main:
        print_summary(Console(), summary)
    return 0


def print_summary(console, summary: dict) -> None:
    base, final = summary.get("base"), summary.get("final")
    if base and final:
        console.print(f"held-out overall: base {base['overall']:.3f} -> final {final['overall']:.3f} "
                      f"({final['overall'] - base['overall']:+.3f})")
    second = summary.get("second_split") or {}
    if second.get("base") and second.get("final"):
        console.print(f"second split ({second['split']}): base {second['base']['overall']:.3f} -> final "
                      f"{second['final']['overall']:.3f} ({second['improvement']:+.3f})")
    t = summary.get("timings_s", {})
    if t:
        console.print("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in t.items()))
    if summary.get("report"):
        console.print(f"report: {summary['report']}", soft_wrap=True)
    elif not summary.get("finished"):
        console.print(f"stopped after iteration {summary['iterations_done']}; continue with --resume "
                      f"(run dir {summary['run_dir']})", soft_wrap=True)
