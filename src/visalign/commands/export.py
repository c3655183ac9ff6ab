"""``visalign export RUN_DIR --out DIR [--merged]``: trained weights in diffusers' format.

Without ``--merged``: the LoRA adapter (``pipe.load_lora_weights(DIR)`` loads it into the stock pipeline).
With ``--merged``: the whole pipeline with the trained weights folded in (``save_pretrained``).
"""

from __future__ import annotations

import argparse

from visalign.commands._args import output_folder

NAME = "export"
HELP = "export trained weights (LoRA or merged) in diffusers format"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a training run directory (with checkpoints/)")
    parser.add_argument("--out", required=True, type=output_folder, help="output folder")
    parser.add_argument("--merged", action="store_true", help="write the full pipeline with the weights merged")
    parser.add_argument("--checkpoint", help="a checkpoint folder (default: the latest of RUN_DIR)")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights (when the run kept an EMA)")


def run(args: argparse.Namespace) -> int:
    from visalign.export import export_run

    out = export_run(args.run_dir, args.out, merged=args.merged, checkpoint=args.checkpoint, use_ema=args.ema)
    print(f"exported {'merged pipeline' if args.merged else 'LoRA'}: {out}")
    return 0
