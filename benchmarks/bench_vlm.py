"""VLM quickstart benchmark: where a token-policy iteration's time goes.

    python benchmarks/bench_vlm.py [--iterations 3] [--json out.json] [section.key=value ...]
    visalign bench vlm [same arguments]

Runs a few training iterations of ``recipes/vlm_quickstart.yaml`` (evaluation and checkpoints off) and reports
seconds per iteration split into rollout / reward / train, sampled answer tokens per second of rollout, trained
answer tokens per second of training (tokens through forward + backward, every inner epoch), and the share of
wall time inside the model's forward and inside backward passes (generate's forward calls included).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    from _clock import bench_setup, mean_split, print_result, timed_iterations
    from visalign.token_rollout import TokenRollout

    default = str(ROOT / "recipes" / "vlm_quickstart.yaml")
    args, cfg, trainer, clock = bench_setup(argv, __doc__.splitlines()[0], default, 3, "bench_vlm_")
    tokens = {"sampled": 0, "trained": 0}
    original_rollout, original_batch = trainer.rollouts.rollout, TokenRollout.token_batch

    def counted_rollout(*a, **k):
        rollout = original_rollout(*a, **k)
        tokens["sampled"] += int(rollout.completion_mask.sum())
        return rollout

    def counted_batch(self, indices):
        tokens["trained"] += int(self.completion_mask[indices].sum())
        return original_batch(self, indices)

    trainer.rollouts.rollout = counted_rollout
    TokenRollout.token_batch = counted_batch
    try:
        rows, wall = timed_iterations(trainer, clock, args.warmup, args.iterations,
                                      on_start=lambda: tokens.update(sampled=0, trained=0))
    finally:
        TokenRollout.token_batch = original_batch
    n = len(rows)
    mean = mean_split(rows)
    result = {
        "config": args.config,
        "overrides": args.overrides,
        "iterations": n,
        "threads": torch.get_num_threads(),
        "answers_per_iteration": cfg.data.prompts_per_iter * cfg.data.group_size,
        "s_per_iteration": wall / n,
        "s_rollout": mean["time/rollout"],
        "s_reward": mean["time/reward"],
        "s_train": mean["time/train"],
        "sampled_tokens_per_s": tokens["sampled"] / sum(r["time/rollout"] for r in rows),
        "trained_tokens_per_s": tokens["trained"] / sum(r["time/train"] for r in rows),
        **clock.shares(wall),
    }
    print_result(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
