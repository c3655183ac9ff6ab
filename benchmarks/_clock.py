"""What the engine benchmarks share: a clock of the time spent inside a network's forward and in backward passes,
and the run-directory-free ``Trainer`` they time."""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import torch


class ForwardBackwardClock:
    """Seconds inside ``net``'s forward calls (hooks) and inside every ``Tensor.backward`` (patched until
    ``restore``)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.seconds = {"forward": 0.0, "backward": 0.0}
        starts: list[float] = []
        net.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
        net.register_forward_hook(lambda *_: self._add("forward", time.perf_counter() - starts.pop()))
        self._original = original = torch.Tensor.backward

        def timed_backward(tensor: torch.Tensor, *a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(tensor, *a, **k)
            finally:
                self._add("backward", time.perf_counter() - t0)

        torch.Tensor.backward = timed_backward

    def _add(self, key: str, seconds: float) -> None:
        self.seconds[key] += seconds

    def reset(self) -> None:
        self.seconds.update(forward=0.0, backward=0.0)

    def restore(self) -> None:
        torch.Tensor.backward = self._original

    def shares(self, wall: float) -> dict[str, float]:
        f, b = self.seconds["forward"], self.seconds["backward"]
        return {"share_forward": f / wall, "share_backward": b / wall, "share_forward_backward": (f + b) / wall}


def bench_setup(argv: list[str] | None, description: str, config: str, iterations: int, prefix: str
                ) -> tuple[argparse.Namespace, Any, Any, ForwardBackwardClock]:
    """The arguments every timed-iteration benchmark takes (a recipe, timed and warm-up iterations, a JSON file
    for the figures, config overrides), then its temporary trainer and the clock on the trained network."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=config)
    parser.add_argument("--iterations", type=int, default=iterations)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg, trainer = bench_trainer(args.config, args.overrides, args.warmup + args.iterations, prefix)
    return args, cfg, trainer, ForwardBackwardClock(trainer.generator.denoiser)


def bench_trainer(config: str, overrides: list[str], iterations: int, prefix: str) -> tuple[Any, Any]:
    """(config, Trainer) for ``iterations`` iterations in a temporary run directory, evaluation and checkpoints
    off."""
    from visalign.config import load_train_config
    from visalign.trainer import Trainer

    run_dir = tempfile.mkdtemp(prefix=prefix)
    cfg = load_train_config(config, [*overrides, f"run_dir={run_dir}", f"train.iterations={iterations}",
                                     "eval.enabled=false", "checkpoint.every=0", "log.progress=false"])
    return cfg, Trainer(cfg)


def timed_iterations(trainer: Any, clock: ForwardBackwardClock, warmup: int, iterations: int,
                     on_start: Any = None) -> tuple[list[dict[str, Any]], float]:
    """Run ``warmup`` then ``iterations`` iterations; the timed iterations' metric rows and their wall time.
    The clock (and ``on_start()``, when given) is reset when timing starts; the clock is restored and the trainer
    closed at the end."""
    rows: list[dict[str, Any]] = []
    try:
        for it in range(1, warmup + iterations + 1):
            if it == warmup + 1:
                clock.reset()
                if on_start is not None:
                    on_start()
                wall0 = time.perf_counter()
            row = trainer.iteration(it)
            if it > warmup:
                rows.append(row)
        return rows, time.perf_counter() - wall0
    finally:
        clock.restore()
        trainer.close()


def mean_split(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean seconds per iteration in rollout, reward and train."""
    return {k: sum(r[k] for r in rows) / len(rows) for k in ("time/rollout", "time/reward", "time/train")}


def print_result(result: dict[str, Any]) -> None:
    for k, v in result.items():
        print(f"{k:28s} {v:.3f}" if isinstance(v, float) else f"{k:28s} {v}")
