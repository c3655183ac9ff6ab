"""The forward process on final samples, shared by the algorithms that need no likelihoods (DiffusionNFT, AWM,
RWR, RAFT).

Each clean sample x_0 (a rollout's final latents) draws a noise level and a Gaussian eps from its own
``torch.Generator``, seeded by the sample's seed, and is noised with its family's forward process (the generator
adapter's ``noise_level_at`` / ``add_noise`` / ``regression_target``):

* ``flow``:      x_sigma = (1 - sigma) x_0 + sigma eps;  target v = eps - x_0;  network time sigma * T
* ``diffusion``: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps;  target eps (epsilon prediction) or
  v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (v prediction);  network time t (an integer step in [0, T))

with T the scheduler's ``num_train_timesteps``: the same time inputs the adapters' ``schedule()`` produces
(flow: ``timesteps = sigmas * T``; diffusion: the DDPM step index). The noise level (``time_sampling``):

* ``uniform``: tau ~ U(t_min, t_max);
* ``logit_normal``: tau = t_min + (t_max - t_min) sigmoid(n), n ~ N(0, 1) (SD3's pretraining density);
* ``schedule``: one of the rollout schedule's steps, uniformly (DiffusionNFT's reference trains there);

tau is sigma for flow models and t / T for diffusion models (t = min(floor(tau T), T - 1)).

The regression is measured in the network's own output space (the adapter's ``regression_target`` weight): a
diffusion UNet is regressed on what it predicts (eps, v or x_0); a flow transformer that predicts x_0 (the shipped
``shapes-flow``) has its velocity error weighted by sigma^2, which is its x_0 error.

Determinism: the draws of a sample depend on its seed only (not on how samples are batched), and the seeds a
``loss`` sees are derived from the rollout seeds, the pass over the rollout (inner epoch) and the draw index, so
a resumed run repeats an uninterrupted one, and every inner epoch sees fresh noise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field, model_validator

from visalign.algorithms.base import Algorithm, RunContext
from visalign.algorithms.common import masked_mean
from visalign.config_io import StrictModel
from visalign.sampling.base import mean_over_data
from visalign.seeding import sample_seed, torch_generators

if TYPE_CHECKING:
    from visalign.models.base import Generator, Schedule
    from visalign.rollout import Rollout, SampleBatch


@dataclass
class Noised:
    """A noised minibatch: the network input, its time input and the regression target."""

    x_t: torch.Tensor  # in the latents' dtype
    t_model: torch.Tensor  # [B] the network's time input
    level: torch.Tensor  # [B] sigma (flow) or abar (diffusion), float32
    noise: torch.Tensor  # float32
    target: torch.Tensor  # float32: eps - x_0 (flow, whatever the network predicts), eps, v or x_0 (diffusion)
    weight: torch.Tensor  # [B] float32: the squared-error weight that puts it in the network's output space


def forward_seed(seed: int, epoch: int, draw: int) -> int:
    """The seed of draw ``draw`` of a sample in pass ``epoch`` over its rollout."""
    return sample_seed(int(seed), epoch, 0, draw, stream="forward")


def _levels(
    generators: list[torch.Generator], generator: Generator, mode: str, t_min: float, t_max: float,
    schedule: Schedule | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_model [B], level [B]) from the first draw of each sample's generator; level = the kernel coordinate."""
    if mode == "schedule":
        if schedule is None:
            raise ValueError("time_sampling='schedule' needs the rollout schedule (Algorithm.bind)")
        j = torch.stack([torch.randint(len(schedule), (), generator=g) for g in generators])
        return schedule.t_model[j].float(), schedule.c[j].float()
    if mode == "uniform":
        u = torch.stack([torch.rand((), generator=g) for g in generators])
    elif mode == "logit_normal":
        u = torch.sigmoid(torch.stack([torch.randn((), generator=g) for g in generators]))
    else:
        raise ValueError(f"unknown time_sampling '{mode}' (uniform, logit_normal, schedule)")
    return generator.noise_level_at(t_min + (t_max - t_min) * u)


def forward_noise(
    x0: torch.Tensor,
    seeds: torch.Tensor,
    generator: Generator,
    time_sampling: str = "uniform",
    t_min: float = 0.0,
    t_max: float = 1.0,
    schedule: Schedule | None = None,
) -> Noised:
    """Noise the clean latents ``x0`` ([B, ...]) with the generator's forward process; sample i draws its time,
    then its eps, from ``torch.Generator().manual_seed(seeds[i])``."""
    gens = torch_generators(seeds.tolist())
    t_model, level = _levels(gens, generator, time_sampling, t_min, t_max, schedule)
    noise = torch.stack([torch.randn(tuple(x0.shape[1:]), generator=g) for g in gens]).to(x0.device)
    level = level.to(x0.device)
    target, weight = generator.regression_target(x0, noise, level)
    return Noised(x_t=generator.add_noise(x0, noise, level).to(x0.dtype), t_model=t_model.to(x0.device),
                  level=level, noise=noise, target=target, weight=weight.to(x0.device))


def regression_loss(prediction: torch.Tensor, noised: Noised) -> torch.Tensor:
    """Per-sample denoising / flow-matching loss weight * mean_d (prediction - target)^2, float32, ``[B]``."""
    return noised.weight * mean_over_data((prediction.float() - noised.target) ** 2)


class ForwardOptions(StrictModel):
    """Options every forward-process algorithm has (its own ``Options`` extend these)."""

    time_sampling: Literal["uniform", "logit_normal", "schedule"] = "uniform"
    t_min: float = Field(0.0, ge=0.0, le=1.0)
    t_max: float = Field(1.0, ge=0.0, le=1.0)
    draws_per_sample: int = Field(1, ge=1)  # noised copies of each sample per pass (one backward pass each)

    @model_validator(mode="after")
    def _check_range(self) -> ForwardOptions:
        if self.t_min > self.t_max:
            raise ValueError(f"t_min={self.t_min} must not exceed t_max={self.t_max}")
        return self


class ForwardProcessAlgorithm(Algorithm):
    """Base of the algorithms that regress the network on forward-noised final samples.

    ``micro_batches`` yields, for a minibatch, ``draws_per_sample`` copies of its ``SampleBatch`` whose ``seeds`` are
    the forward-process seeds of that draw (see ``forward_seed``); ``noise`` turns one into a ``Noised`` batch.
    Subclasses implement ``loss`` and may override ``select`` (which samples of a minibatch are trained on).
    """
    approach = "forward process"

    needs = frozenset({"final"})
    Options = ForwardOptions

    def __init__(self, options: StrictModel) -> None:
        super().__init__(options)
        self._passes: dict[int, int] = {}

    def on_iteration_start(self, iteration: int) -> None:
        self._passes = {}  # passes over each sample of this iteration's rollout (its inner epochs)

    def select(self, rollout: Rollout, indices: torch.Tensor) -> SampleBatch:
        return rollout.sample_batch(indices)

    def micro_batches(self, rollout: Rollout, indices: torch.Tensor) -> Iterator[SampleBatch]:
        batch = self.select(rollout, indices)
        epochs = []
        for i in indices.tolist():
            epochs.append(self._passes.get(i, 0))
            self._passes[i] = epochs[-1] + 1
        for draw in range(self.options.draws_per_sample):
            seeds = [forward_seed(s, e, draw) for s, e in zip(batch.seeds.tolist(), epochs, strict=True)]
            yield dataclasses.replace(batch, seeds=torch.tensor(seeds, dtype=torch.int64))

    def noise(self, batch: SampleBatch, generator: Generator) -> Noised:
        opts = self.options
        schedule = self.context.schedule
        return forward_noise(batch.final_latents, batch.seeds, generator, opts.time_sampling, opts.t_min,
                             opts.t_max, schedule)

    @staticmethod
    def predict(generator: Generator, noised: Noised, batch: SampleBatch) -> torch.Tensor:
        """The conditional prediction (guidance 1: the regression target is the conditional velocity / noise)."""
        return generator.predict(noised.x_t, noised.t_model, batch.cond, 1.0).float()

    def weighted_regression(self, batch: SampleBatch, generator: Generator,
                            weights: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The supervised loss of RWR and RAFT: sum_i weights_i * (denoising / flow-matching loss)_i."""
        noised = self.noise(batch, generator)
        per = regression_loss(self.predict(generator, noised, batch), noised)
        loss = (weights.to(per.device) * per).sum()
        metrics = {"loss": float(loss.detach()), "fm_loss": float(per.detach().mean()),
                   "noise_level/mean": float(noised.level.mean())}
        return loss, metrics

    @staticmethod
    def reference_penalty(generator: Generator, noised: Noised, batch: SampleBatch,
                          prediction: torch.Tensor, weighted: bool = True) -> torch.Tensor:
        """Per-sample mean_d (prediction - prediction_ref)^2 against the frozen reference, ``[B]``, in the network's
        output space (``weighted``) or in the prediction's own (velocity / noise)."""
        with torch.no_grad(), generator.reference():
            ref = generator.predict(noised.x_t, noised.t_model, batch.cond, 1.0).float()
        penalty = mean_over_data((prediction - ref) ** 2)
        return noised.weight * penalty if weighted else penalty

    def with_reference_penalty(self, loss: torch.Tensor, metrics: dict[str, float], generator: Generator,
                               noised: Noised, batch: SampleBatch, prediction: torch.Tensor,
                               kl_beta: float, weighted: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        """``loss + kl_beta * mean reference_penalty`` (when kl_beta > 0); logs ``kl`` and ``loss``."""
        if kl_beta > 0:
            penalty = self.reference_penalty(generator, noised, batch, prediction, weighted)
            kl = masked_mean(penalty, batch.mask)
            loss = loss + kl_beta * kl
            metrics["kl"] = float(kl.detach())
        metrics["loss"] = float(loss.detach())
        return loss, metrics


def combined_reward(rewards: dict[str, torch.Tensor], context: RunContext) -> torch.Tensor:
    """The weighted sum of the run's rewards (names and weights from the trainer's context); without a context,
    the single reward present."""
    pairs = context.rewards
    if pairs:
        total = None
        for reward, weight in pairs:
            value = rewards[getattr(reward, "name", type(reward).__name__)].float() * weight
            total = value if total is None else total + value
        return total
    main = [k for k in rewards if "/" not in k]
    if len(main) != 1:
        raise ValueError(f"cannot tell which reward to use among {sorted(main)} (bind the algorithm's rewards)")
    return rewards[main[0]].float()
