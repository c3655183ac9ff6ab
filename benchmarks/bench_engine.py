"""Engine benchmark on the quickstart config: where an iteration's time goes.

    python benchmarks/bench_engine.py [--iterations 5] [--json out.json] [section.key=value ...]
    visalign bench engine [same arguments]

Runs a few training iterations (evaluation and checkpoints off) and reports seconds per iteration split into
rollout / reward / train, rollout images/s, training samples/s (sample-steps through forward + backward per
second), and the share of wall time spent inside the denoiser's forward and inside backward passes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "recipes" / "quickstart.yaml"))
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    from visalign.config import load_train_config
    from visalign.trainer import Trainer

    run_dir = tempfile.mkdtemp(prefix="bench_engine_")
    total = args.warmup + args.iterations
    cfg = load_train_config(args.config, [*args.overrides, f"run_dir={run_dir}", f"train.iterations={total}",
                                          "eval.enabled=false", "checkpoint.every=0", "log.progress=false"])
    trainer = Trainer(cfg)
    net = trainer.generator.denoiser
    clock = {"forward": 0.0, "backward": 0.0}
    starts: list[float] = []
    net.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))

    def _after(*_):
        clock["forward"] += time.perf_counter() - starts.pop()

    net.register_forward_hook(_after)
    original_backward = torch.Tensor.backward

    def timed_backward(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return original_backward(self, *a, **k)
        finally:
            clock["backward"] += time.perf_counter() - t0

    torch.Tensor.backward = timed_backward
    rows = []
    try:
        for it in range(1, total + 1):
            if it == args.warmup + 1:
                clock.update(forward=0.0, backward=0.0)
                wall0 = time.perf_counter()
            row = trainer.iteration(it)
            if it > args.warmup:
                rows.append(row)
        wall = time.perf_counter() - wall0
    finally:
        torch.Tensor.backward = original_backward
        trainer.close()

    n = len(rows)
    images = cfg.data.prompts_per_iter * cfg.data.group_size
    mean = {k: sum(r[k] for r in rows) / n for k in ("time/rollout", "time/reward", "time/train")}
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
        "share_forward": clock["forward"] / wall,
        "share_backward": clock["backward"] / wall,
        "share_forward_backward": (clock["forward"] + clock["backward"]) / wall,
    }
    for k, v in result.items():
        print(f"{k:28s} {v:.3f}" if isinstance(v, float) else f"{k:28s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
