"""Exponential moving average of the trainable weights: ema <- decay * ema + (1 - decay) * w after each step.

``swapped()`` temporarily loads the EMA weights into the model (for evaluation), restoring them on exit;
``apply()`` loads them for good (the weights a pretraining run ships).

With ``warmup=True`` (pretraining) the decay after ``n`` updates is ``min(decay, (1 + n) / (10 + n))``, so early
averages are not dominated by the random initialisation (a plain 0.999 average still holds 13% of the init after
2,000 steps). The two modes fold a step in with different but equivalent float expressions (``mul_``/``add_``
and ``lerp_``); each is kept bit for bit because runs were recorded with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """The average of ``named_params`` (name, parameter pairs), kept beside them as ``shadow`` by name."""

    def __init__(self, named_params: list[tuple[str, nn.Parameter]], decay: float, warmup: bool = False) -> None:
        self.decay = decay
        self.warmup = warmup
        self.params = dict(named_params)
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}
        # updates folded in so far: the n of the warm-up (a resumed run sets it to the step it resumes at)
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        """The decay of the update that follows ``updates`` earlier ones."""
        return min(self.decay, (1.0 + updates) / (10.0 + updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights in (after an optimizer step)."""
        if self.warmup:
            weight = 1.0 - self.decay_at(self.updates)
            for name, p in self.params.items():
                self.shadow[name].lerp_(p.detach(), weight)
        else:
            for name, p in self.params.items():
                self.shadow[name].mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
        self.updates += 1

    @torch.no_grad()
    def apply(self) -> None:
        """Load the EMA weights into the parameters."""
        for n, p in self.params.items():
            p.copy_(self.shadow[n])

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        self.apply()
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(backup[n])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.clone() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise KeyError("EMA state does not match the trainable parameters")
        for n, t in state.items():
            self.shadow[n].copy_(t)
