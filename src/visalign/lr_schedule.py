"""Learning-rate schedules, as a factor of the base rate at optimizer step ``step`` (0-based).

One function for every trainer of the library (RL fine-tuning, pretraining, the ShapesWorld reward model):

* a linear warm-up over the first ``warmup`` steps, factor (step + 1) / warmup;
* then ``kind``: ``constant`` (1), ``cosine`` (0.5 (1 + cos(pi f))) or ``linear`` (1 - f), with
  f = min(1, (step - warmup) / max(1, total - warmup)) the fraction of the post-warm-up steps done;
* ``decay`` > 0 (with ``kind="constant"``): the factor also falls linearly to 0 over the last ``decay`` steps
  before ``total`` (the pretraining stages' warm-up / constant / cool-down).
"""

from __future__ import annotations

import math
from collections.abc import Callable

KINDS = ("constant", "cosine", "linear")


def lr_factor(step: int, warmup: int = 0, total: int = 0, kind: str = "constant", decay: int = 0) -> float:
    """The learning-rate factor at ``step`` (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown learning-rate schedule '{kind}' ({', '.join(KINDS)})")
    if warmup and step < warmup:
        factor = (step + 1) / warmup
    elif kind == "constant":
        factor = 1.0
    else:
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        factor = 0.5 * (1 + math.cos(math.pi * frac)) if kind == "cosine" else 1.0 - frac
    if decay > 0:
        factor = min(factor, (total - step) / decay)
    return factor


def lr_lambda(warmup: int, total: int, kind: str = "constant", decay: int = 0) -> Callable[[int], float]:
    """``lr_factor`` with the schedule fixed, for ``torch.optim.lr_scheduler.LambdaLR``."""

    def factor(step: int) -> float:
        return lr_factor(step, warmup, total, kind, decay)

    return factor
