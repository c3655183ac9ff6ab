"""Samplers that are not rollouts: the deterministic sampler run with or without grad from any step (reward
back-propagation: ReFL, DRaFT, AlignProp) and the batched no-grad sampler of evaluation.

Both start every sample from its own seeded generator, as a rollout does, so that from the same seeds they
produce the rollout's images bit for bit (with a deterministic kernel).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.checkpoint import checkpoint

from visalign.seeding import torch_generators

if TYPE_CHECKING:
    from visalign.models.base import Cond, Generator, Schedule
    from visalign.sampling.base import Kernel


class DifferentiableSampler:
    """The deterministic sampler of a generator, runnable with or without grad from any step."""

    def __init__(self, generator: Generator, schedule: Schedule, kernel: Kernel, checkpointing: bool = False):
        self.generator, self.schedule, self.kernel = generator, schedule, kernel
        self.checkpointing = checkpointing

    def __len__(self) -> int:
        return len(self.schedule)

    def init(self, seeds: torch.Tensor) -> tuple[torch.Tensor, list[torch.Generator]]:
        """The rollout's initial noise (drawn first from each sample's generator) and the generators."""
        gens = torch_generators(seeds.tolist())
        return self.generator.init_noise(gens), gens

    def _coords(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        s = self.schedule
        return (s.t_model[i].to(x.device).expand(n), s.c[i].to(x.device).expand(n),
                s.c_next[i].to(x.device).expand(n))

    def _step(self, x: torch.Tensor, i: int, cond: Cond, guidance: float) -> torch.Tensor:
        t, c, c_next = self._coords(i, x)
        out = self.generator.predict(x, t, cond, guidance)
        return self.kernel.step(x, out, c, c_next, None).x_next

    def _x0(self, x: torch.Tensor, i: int, cond: Cond, guidance: float) -> torch.Tensor:
        t, c, _ = self._coords(i, x)
        out = self.generator.predict(x, t, cond, guidance)
        return self.generator.x0_from_output(x, out, c).to(x.dtype)

    def _maybe_checkpoint(self, fn, *args: Any) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def run(self, x: torch.Tensor, start: int, end: int, cond: Cond, guidance: float, grad: bool) -> torch.Tensor:
        """Steps ``start .. end - 1`` from ``x``; with ``grad=False`` the result is detached."""
        with torch.set_grad_enabled(grad):
            for i in range(start, end):
                x = self._maybe_checkpoint(self._step, x, i, cond, guidance)
        return x

    def predict_x0(self, x: torch.Tensor, i: int, cond: Cond, guidance: float) -> torch.Tensor:
        """The network's one-step estimate of the clean latents at step ``i`` (with grad)."""
        return self._maybe_checkpoint(self._x0, x, i, cond, guidance)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self._maybe_checkpoint(self.generator.decode, latents)

    def truncated(self, seeds: torch.Tensor, cond: Cond, guidance: float, k: int) -> torch.Tensor:
        """Final latents with the gradient flowing through the last ``k`` steps only (0 < k <= S)."""
        steps = len(self)
        if not 0 < k <= steps:
            raise ValueError(f"truncation K={k} outside 1..{steps}")
        x, _ = self.init(seeds)
        x = self.run(x, 0, steps - k, cond, guidance, grad=False)
        return self.run(x, steps - k, steps, cond, guidance, grad=True)


@torch.no_grad()
def sample_deterministic(
    generator: Generator,
    schedule: Schedule,
    kernel: Kernel,
    prompts: Sequence[str],
    seeds: Sequence[int],
    guidance_scale: float = 1.0,
    batch_size: int = 32,
) -> torch.Tensor:
    """Images [N, 3, H, W] from the deterministic sampler (evaluation): no step is stored."""
    images = []
    for s in range(0, len(prompts), batch_size):
        ps = list(prompts[s : s + batch_size])
        gens = torch_generators(seeds[s : s + batch_size])
        x = generator.init_noise(gens)
        t_model, c, c_next = (v.to(x.device) for v in (schedule.t_model, schedule.c, schedule.c_next))
        cond = generator.encode(ps, with_negative=guidance_scale > 1.0)
        n = len(ps)
        for i in range(len(schedule)):
            out = generator.predict(x, t_model[i].expand(n), cond, guidance_scale)
            x = kernel.step(x, out, c[i].expand(n), c_next[i].expand(n), None).x_next
        images.append(generator.decode(x))
    return torch.cat(images)
