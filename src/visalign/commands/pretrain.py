"""``visalign pretrain --config configs/pretrain/flow.yaml [key=value ...]``: pretrain a tiny base model.

``family: vlm`` (``configs/pretrain/vlm.yaml``) trains the tiny vision-language model (``pretrain/vlm/``).

Rerunning the same command with the same ``run_dir`` resumes from the last checkpoint.
``--from-export N`` (with ``train.steps=N``) finishes a run with the pipeline exported at step N of a longer
run, which is what an N-step run ends with (constant learning rate after the warm-up).
"""

from __future__ import annotations

import argparse

from visalign.commands._args import nonnegative_int
from visalign.errors import UserError

NAME = "pretrain"
HELP = "pretrain a tiny base model on ShapesWorld"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/pretrain/flow.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides such as train.steps=100 run_dir=runs/x")
    parser.add_argument(
        "--from-export",
        type=nonnegative_int,
        metavar="STEP",
        default=None,
        help="finish with run_dir/exports/step-STEP of a longer run (identical to a train.steps=STEP run)",
    )


def run(args: argparse.Namespace) -> int:
    from visalign.config_io import load_config
    from visalign.pretrain.vlm.config import VLMPretrainConfig, is_vlm_config

    if is_vlm_config(args.config):  # the tiny vision-language model: supervised fine-tuning
        from visalign.pretrain.vlm.loop import run_vlm_pretrain

        if args.from_export is not None:
            raise UserError("--from-export is for the image pretraining runs; for family vlm, "
                            "run_dir/exports/step-N is already the model at step N")
        run_vlm_pretrain(load_config(VLMPretrainConfig, args.config, args.overrides))
        return 0
    from visalign.pretrain.config import PretrainConfig
    from visalign.pretrain.finalize import finalize_export
    from visalign.pretrain.loop import run_pretrain

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    if args.from_export is not None:
        finalize_export(cfg, args.from_export)
    else:
        run_pretrain(cfg)
    return 0
