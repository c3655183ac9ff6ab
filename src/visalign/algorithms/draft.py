"""DRaFT (Clark et al., 2023, "Directly Fine-Tuning Diffusion Models on Differentiable Rewards", arXiv:2309.17400).

Direct reward fine-tuning: sample with the deterministic sampler and maximise the reward of the sample by
gradient ascent through the sampling chain. ``draft`` implements the paper's efficient variants:

* **DRaFT-K**: back-propagate only through the last K sampling steps (earlier steps run without grad):

      x_0 = sample_theta(x_S; stop_grad before step S - K),   L = -mean_b r(decode(x_0))

  K = S is full back-propagation (DRaFT); the paper found small K (K = 1) to work as well or better.
* **DRaFT-LV** (``lv: true``, K = 1): after a full no-grad sample x_0, re-noise it n times to the last
  step's noise level and denoise each copy with one step, with grad; the n rewards are averaged, which lowers
  the variance of the K = 1 gradient for the cost of n last steps:

      x_1^j = noise(stop_grad(x_0), eps_j, c_{S-1})    (flow: (1 - sigma) x_0 + sigma eps; DDIM: sqrt(ab) x_0 + sqrt(1 - ab) eps)
      L     = -mean_j mean_b r(decode(step_theta(x_1^j)))

  (the paper sums the n gradients; the mean only rescales the step size). eps_j come from each sample's own
  seeded generator.

Options: ``k`` (default 1), ``lv`` (default false), ``lv_samples`` n (default 2), ``checkpointing``
(gradient checkpointing of the steps with grad; default false).
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from visalign.algorithms._reward_backprop import RewardBackprop
from visalign.algorithms.base import register_algorithm
from visalign.config_io import StrictModel


@register_algorithm("draft")
class DRaFT(RewardBackprop):
    paper = "Directly Fine-Tuning Diffusion Models on Differentiable Rewards (arXiv:2309.17400)"

    class Options(StrictModel):
        k: int = Field(1, ge=1)  # steps back-propagated through (clipped to the number of sampling steps)
        lv: bool = False  # DRaFT-LV: K = 1 with lv_samples re-noised copies of the last step
        lv_samples: int = Field(2, ge=1)
        checkpointing: bool = False

        @model_validator(mode="after")
        def _lv_is_k1(self):
            if self.lv and self.k != 1:
                raise ValueError("DRaFT-LV back-propagates through the last step only: set k: 1 with lv: true")
            return self

    def loss(self, batch, generator):
        sampler = self.sampler(generator)
        steps = len(sampler)
        if not self.options.lv:
            k = min(self.options.k, steps)
            images = sampler.decode(sampler.truncated(batch.seeds, batch.cond, batch.guidance_scale, k))
            reward, metrics = self.score(images, batch)
            loss = -reward.mean()
            metrics.update({"loss": float(loss.detach()), "backprop/k": float(k)})
            return loss, metrics

        n = self.options.lv_samples
        x, gens = sampler.init(batch.seeds)
        x0 = sampler.run(x, 0, steps, batch.cond, batch.guidance_scale, grad=False)
        # copy j of sample b sits at row j * B + b
        noise = torch.cat([torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens])
                           for _ in range(n)]).to(device=x0.device, dtype=x0.dtype)
        last = steps - 1
        c_last = sampler.schedule.c[last].to(x0.device).expand(n * len(x0))
        x1 = generator.add_noise(x0.repeat(n, *([1] * (x0.ndim - 1))), noise, c_last).to(x0.dtype)
        cond = batch.cond.select(torch.arange(len(x0)).repeat(n))
        images = sampler.decode(sampler.run(x1, last, steps, cond, batch.guidance_scale, grad=True))
        reward, metrics = self.score(images, batch, repeat=n)
        loss = -reward.mean()
        metrics.update({"loss": float(loss.detach()), "backprop/k": 1.0})
        return loss, metrics
