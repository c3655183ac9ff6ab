"""ReFL (Xu et al., 2023, "ImageReward: Learning and Evaluating Human Preferences for Text-to-Image Generation",
arXiv:2304.05977): Reward Feedback Learning.

Sample without grad down to a random late step t (the reward model scores the one-step prediction of the clean
image reliably there), then make one network evaluation with grad and score its prediction x0_hat:

    t       ~ U{ceil(t_min S), ..., ceil(t_max S) - 1}         one draw per batch (S sampling steps)
    x_t     = sample_theta(x_S) down to step t                  no grad
    x0_hat  = x_t - sigma_t v_theta(x_t)                        flow;  DDIM: (x_t - sqrt(1 - ab_t) eps_theta) / sqrt(ab_t)
    L       = lambda * mean_b ReLU(c - r(decode(x0_hat)))       (c = None: L = -lambda * mean_b r)

The hinge stops pushing once a sample's reward exceeds the target c. The paper (40 steps, ImageReward scores)
draws t from steps 30..39 (t_min 0.75, t_max 1.0), with c = 2 and lambda = 1e-3, and mixes in the pre-training
loss on real data to regularise; no real data is used here.

Options: ``t_min``, ``t_max`` (fractions of the sampling steps), ``target`` c, ``scale`` lambda, ``checkpointing``.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, model_validator

from visalign.algorithms._reward_backprop import RewardBackprop, batch_generator
from visalign.algorithms.base import RunContext, register_algorithm
from visalign.config_io import StrictModel
from visalign.errors import UserError


def refl_step_range(num_steps: int, t_min: float, t_max: float) -> tuple[int, int]:
    """Inclusive range of step indices i with t_min <= i / S < t_max (at least the last step when t_max = 1)."""
    lo, hi = math.ceil(t_min * num_steps), math.ceil(t_max * num_steps) - 1
    return lo, min(hi, num_steps - 1)


def hinge_loss(reward: torch.Tensor, target: float | None, scale: float) -> torch.Tensor:
    """lambda * mean ReLU(c - r), or -lambda * mean r without a target."""
    if target is None:
        return -scale * reward.mean()
    return scale * torch.relu(target - reward).mean()


@register_algorithm("refl")
class ReFL(RewardBackprop):
    paper = ("ImageReward: Learning and Evaluating Human Preferences for Text-to-Image Generation "
             "(arXiv:2304.05977)")

    class Options(StrictModel):
        t_min: float = Field(0.75, ge=0.0, lt=1.0)
        t_max: float = Field(1.0, gt=0.0, le=1.0)
        target: float | None = 2.0  # c; the paper's value for ImageReward scores (use ~1 for rewards in [0, 1])
        scale: float = Field(1e-3, gt=0.0)  # lambda
        checkpointing: bool = False

        @model_validator(mode="after")
        def _range(self):
            if self.t_min >= self.t_max:
                raise ValueError(f"t_min ({self.t_min}) must be below t_max ({self.t_max})")
            return self

    def bind(self, context: RunContext) -> None:
        super().bind(context)
        steps = len(self.schedule)
        lo, hi = refl_step_range(steps, self.options.t_min, self.options.t_max)
        if lo > hi:
            raise UserError(f"algorithm 'refl': no sampling step i with {self.options.t_min} <= i / {steps} < "
                            f"{self.options.t_max}; widen [t_min, t_max) or use more sampling steps")

    def draw_step(self, seeds: torch.Tensor) -> int:
        lo, hi = refl_step_range(len(self.schedule), self.options.t_min, self.options.t_max)
        return int(torch.randint(lo, hi + 1, (1,), generator=batch_generator(seeds, "refl")))

    def loss(self, batch, generator):
        sampler = self.sampler(generator)
        t = self.draw_step(batch.seeds)
        x, _ = sampler.init(batch.seeds)
        x_t = sampler.run(x, 0, t, batch.cond, batch.guidance_scale, grad=False)
        images = sampler.decode(sampler.predict_x0(x_t, t, batch.cond, batch.guidance_scale))
        reward, metrics = self.score(images, batch)
        loss = hinge_loss(reward, self.options.target, self.options.scale)
        with torch.no_grad():
            active = reward < self.options.target if self.options.target is not None else torch.ones_like(reward)
            metrics.update({"loss": float(loss.detach()), "refl/step": float(t),
                            "refl/hinge_active_frac": float(active.float().mean())})
        return loss, metrics
