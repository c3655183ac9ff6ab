"""``visalign signal --config RECIPE``: the per-sample signal-to-noise ratio of a recipe's policy gradient at its
base (``gradient_signal.py``), with the noise floor (``--shuffle-rewards``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "signal"
HELP = "measure a recipe's gradient signal-to-noise ratio at its base (no update is made)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the recipe YAML")
    parser.add_argument("--rollouts", type=int, default=3, help="independent rollouts (iterations) to measure")
    parser.add_argument("--splits", type=int, default=8, help="random half splits of each rollout's groups")
    parser.add_argument("--shuffle-rewards", action="store_true",
                        help="the noise floor: rewards permuted within each group before the advantages")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from visalign.errors import UserError
    from visalign.gradient_signal import signal_of_recipe

    if args.rollouts < 1 or args.splits < 1:
        raise UserError("--rollouts and --splits must be at least 1")
    console = Console()

    def show(row) -> None:
        console.print(f"rollout {row.iteration}: {row.samples} samples, cosine {row.cosine:+.4f} "
                      f"(sd {row.cosine_sd:.4f}), per-sample SNR {row.per_sample_snr:.2e}, zero-variance groups "
                      f"{row.zero_var_groups:.2f}, reward {row.reward_mean:.3f} (within-group sd "
                      f"{row.reward_within_sd:.3f})")

    result = signal_of_recipe(args.config, args.overrides, args.rollouts, args.splits, args.shuffle_rewards, show)
    console.print(f"{args.config}: mean cosine {result['cosine']:+.4f} +- {result['cosine_se']:.4f}, per-sample "
                  f"SNR {result['per_sample_snr']:.2e}, zero-variance groups {result['zero_var_groups']:.2f}"
                  + (" (rewards shuffled: the noise floor)" if args.shuffle_rewards else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0
