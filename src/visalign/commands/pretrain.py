"""``visalign pretrain --config configs/pretrain/flow.yaml [key=value ...]``: pretrain a tiny base model.

Rerunning the same command with the same ``run_dir`` resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse

NAME = "pretrain"
HELP = "pretrain a tiny base model on ShapesWorld"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/pretrain/flow.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as train.steps=100 run_dir=runs/x")


def run(args: argparse.Namespace) -> int:
    from visalign.config_io import load_config
    from visalign.pretrain.config import PretrainConfig
    from visalign.pretrain.loop import run_pretrain

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    run_pretrain(cfg)
    return 0
