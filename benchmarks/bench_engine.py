"""Engine benchmark on the quickstart config: where an iteration's time goes.

    python benchmarks/bench_engine.py [--iterations 5] [--json out.json] [section.key=value ...]
    visalign bench engine [same arguments]

Runs a few training iterations (evaluation and checkpoints off) and reports seconds per iteration split into
rollout / reward / train, rollout images/s, training samples/s (sample-steps through forward + backward per
second), and the share of wall time spent inside the denoiser's forward and inside backward passes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    from _clock import bench_setup, mean_split, print_result, timed_iterations

    default = str(ROOT / "recipes" / "quickstart.yaml")
    args, cfg, trainer, clock = bench_setup(argv, __doc__.splitlines()[0], default, 5, "bench_engine_")
    rows, wall = timed_iterations(trainer, clock, args.warmup, args.iterations)
    n = len(rows)
    images = cfg.data.prompts_per_iter * cfg.data.group_size
    mean = mean_split(rows)
    sample_steps = sum(r["trained_samples"] for r in rows) * trainer.rollouts.num_train_steps_effective * cfg.train.inner_epochs
    result = {
        "config": args.config,
        "overrides": args.overrides,
        "iterations": n,
        "threads": torch.get_num_threads(),
        "images_per_iteration": images,
        "trained_steps_per_sample": trainer.rollouts.num_train_steps_effective,
        "s_per_iteration": wall / n,
        "s_rollout": mean["time/rollout"],
        "s_reward": mean["time/reward"],
        "s_train": mean["time/train"],
        "rollout_images_per_s": images / mean["time/rollout"],
        "train_sample_steps_per_s": sample_steps / sum(r["time/train"] for r in rows),
        **clock.shares(wall),
    }
    print_result(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
