"""How much signal one iteration's policy gradient holds: the agreement of the gradients of two halves of a rollout.

    python experiments/gradient_agreement.py --config recipes/ddpo_shapes.yaml [--iterations 3] [--splits 8] \
        [section.key=value ...]

Rolls out an iteration of the recipe at the base weights (no update is made), computes the advantages as the
trainer does, then splits the groups at random into two halves A and B and computes the algorithm's loss gradient
on each half separately (every stored step, as the trainer's minibatches do). If each half's gradient is the true
direction g plus independent noise of variance s^2 / (n / 2) (n samples in all), their cosine is

    cos = r n / (r n + 2),      r = |g|^2 / s^2  (the per-sample signal-to-noise ratio),

so the cosine measures whether a rollout of this size carries a usable direction at all: 0 is pure noise. The
script reports the cosine per rollout (mean over random splits), the implied r, and n_half = 2 / r, the number of
samples at which the gradient would be as much signal as noise. A reward that does not depend on the image
(``--shuffle-rewards`` permutes the rewards within each group) gives the noise floor.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _gradient(trainer, rollout, indices: torch.Tensor) -> torch.Tensor:
    """The loss gradient of one subset of samples, flattened over the trainable parameters."""
    params = trainer.generator.trainable_parameters()
    for p in params:
        p.grad = None
    micro = list(trainer.algorithm.micro_batches(rollout, indices))
    for mb in micro:
        loss, _ = trainer.algorithm.loss(mb, trainer.generator)
        (loss / len(micro)).backward()
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in params])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "recipes" / "ddpo_shapes.yaml"))
    parser.add_argument("--iterations", type=int, default=3, help="independent rollouts")
    parser.add_argument("--splits", type=int, default=8, help="random half splits per rollout")
    parser.add_argument(
        "--shuffle-rewards", action="store_true", help="noise floor: rewards permuted within groups"
    )
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    from visalign.config import load_train_config
    from visalign.trainer import Trainer

    run_dir = tempfile.mkdtemp(prefix="grad_agreement_")
    cfg = load_train_config(args.config, [*args.overrides, f"run_dir={run_dir}", "eval.enabled=false",
                                          "checkpoint.every=0", "log.progress=false"])  # fmt: skip
    trainer = Trainer(cfg)
    captured: list = []

    def capture(rollout, iteration):  # replaces the update: the weights stay at the base model's
        captured.append(rollout)
        return {}

    trainer._optimize = capture  # noqa: SLF001 - a diagnostic that must see the rollout the trainer builds
    if args.shuffle_rewards:
        original_score = trainer._score  # noqa: SLF001

        def shuffled(rollout):
            scores = original_score(rollout)
            gen = torch.Generator().manual_seed(1234 + len(captured))
            out = {}
            for name, values in scores.items():
                values = values.clone()
                for g in rollout.group_ids.unique():
                    idx = (rollout.group_ids == g).nonzero().flatten()
                    values[idx] = values[idx[torch.randperm(len(idx), generator=gen)]]
                out[name] = values
            return out

        trainer._score = shuffled  # noqa: SLF001

    rows = []
    for it in range(args.iterations):
        trainer.iteration(it)
        rollout = captured[-1]
        groups = rollout.group_ids.unique()
        trainer.generator.denoiser.train()
        cosines = []
        for split in range(args.splits):
            perm = groups[torch.randperm(len(groups), generator=torch.Generator().manual_seed(split))]
            half_a = set(perm[: len(perm) // 2].tolist())
            in_a = torch.tensor([int(g) in half_a for g in rollout.group_ids])
            idx_a, idx_b = in_a.nonzero().flatten(), (~in_a).nonzero().flatten()
            g_a, g_b = _gradient(trainer, rollout, idx_a), _gradient(trainer, rollout, idx_b)
            cosines.append(float(torch.nn.functional.cosine_similarity(g_a, g_b, dim=0)))
        trainer.generator.denoiser.eval()
        n = len(rollout)
        cos = statistics.mean(cosines)
        r = 2 * cos / (n * (1 - cos)) if 0 < cos < 1 else float("nan")
        row = {"iteration": it, "samples": n, "cosine": cos, "cosine_sd": statistics.pstdev(cosines),
               "per_sample_snr": r, "samples_for_snr_1": (2 / r) if math.isfinite(r) and r > 0 else math.inf}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {"config": args.config, "overrides": args.overrides, "shuffle_rewards": args.shuffle_rewards,
               "mean_cosine": statistics.mean(r["cosine"] for r in rows), "rollouts": rows}  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
