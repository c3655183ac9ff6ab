"""The optimizer side of a run: AdamW with the config's learning-rate schedule, the number of optimizer steps per
iteration, the cross-process gradient sum, and the per-iteration aggregation of an algorithm's metrics."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING

import torch

from visalign.lr_schedule import lr_lambda

if TYPE_CHECKING:
    from visalign.config import Config


def opt_steps_per_iter(cfg: Config) -> int:
    """Optimizer steps of one iteration: inner epochs x minibatches / gradient accumulation (rounded up)."""
    n = cfg.data.prompts_per_iter * cfg.data.group_size
    mb = cfg.train.minibatch_size or n
    return cfg.train.inner_epochs * max(1, math.ceil(math.ceil(n / mb) / cfg.train.grad_accum))


def build_optimizer(cfg: Config, params: list[torch.nn.Parameter]
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``params`` and its schedule (warm-up over ``train.warmup_iters`` iterations, then
    ``train.lr_schedule`` over the whole run)."""
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, betas=tuple(cfg.train.betas), eps=cfg.train.adam_eps,
                                  weight_decay=cfg.train.weight_decay)
    per_iter = opt_steps_per_iter(cfg)
    schedule = lr_lambda(cfg.train.warmup_iters * per_iter, cfg.train.iterations * per_iter, cfg.train.lr_schedule)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its sum over the processes (one all-reduce of a flat buffer)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    torch.distributed.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


class MetricAverager:
    """Aggregates per-micro-batch metrics: min for '/min' keys, max for '/max' and '_max' keys, else mean."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = defaultdict(list)

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.values[k].append(float(v))

    def result(self) -> dict[str, float]:
        out = {}
        for k, vs in self.values.items():
            if k.endswith("/min"):
                out[k] = min(vs)
            elif k.endswith("/max") or k.endswith("_max"):
                out[k] = max(vs)
            else:
                out[k] = sum(vs) / len(vs)
        return out
