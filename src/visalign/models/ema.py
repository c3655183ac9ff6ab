"""Exponential moving average of the trainable weights: ema <- decay * ema + (1 - decay) * w after each step.

``swapped()`` temporarily loads the EMA weights into the model (for evaluation), restoring them on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    def __init__(self, named_params: list[tuple[str, nn.Parameter]], decay: float) -> None:
        self.decay = decay
        self.params = dict(named_params)
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.params.items():
            self.shadow[name].mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n])
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
