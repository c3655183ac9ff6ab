"""DiffusionNFT (Zheng et al., 2025, "DiffusionNFT: Online Diffusion Reinforcement with Forward Process",
arXiv:2509.16117).

Rollouts by any solver (the ODE is the natural choice), without CFG and without likelihoods; only the final
samples are kept. Each sample x_0 is noised with the forward process, x_t = (1 - t) x_0 + t eps, and the policy
v_theta is contrasted with the old policy v_old (an EMA of the trained weights):

    v+ = (1 - b) v_old + b v_theta          (implicit positive policy)
    v- = (1 + b) v_old - b v_theta          (implicit negative policy)
    r  = clip(A / (2 A_max) + 1/2, 0, 1)     (optimality probability from the advantage)
    L  = E[ r ||v+ - v||^2 + (1 - r) ||v- - v||^2 ],   v = eps - x_0

(||.||^2 averaged over the data dimensions) plus an optional kl_beta E||v_theta - v_ref||^2 to the reference.
Samples with A >= A_max only pull v+ towards the data, samples with A <= -A_max only push v- towards it.

The old policy: at the start of iteration k (k - 1 iterations done), old <- d old + (1 - d) theta with
d = min(ema_rate (k - 1), ema_max) (the reference implementation's decay schedule, one update per rollout);
it starts equal to the policy. It is kept here and saved with the algorithm's state, so a resume is exact; to
evaluate v_old its weights are swapped into the trainable parameters under no_grad.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

import torch
from pydantic import Field

from visalign.algorithms._forward_process import ForwardOptions, ForwardProcessAlgorithm, regression_loss
from visalign.algorithms.base import register_algorithm
from visalign.algorithms.common import masked_mean
from visalign.models.ema import EMA
from visalign.sampling.base import mean_over_data


def nft_loss(
    v_theta: torch.Tensor, v_old: torch.Tensor, target: torch.Tensor, advantages: torch.Tensor, beta: float,
    adv_max: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample NFT loss ``[B]`` and the optimality probabilities r ``[B]``."""
    v_theta, v_old = v_theta.float(), v_old.float().detach()
    positive = (1 - beta) * v_old + beta * v_theta
    negative = (1 + beta) * v_old - beta * v_theta
    r = torch.clamp(advantages.float() / (2 * adv_max) + 0.5, 0.0, 1.0)
    loss_pos = mean_over_data((positive - target) ** 2)
    loss_neg = mean_over_data((negative - target) ** 2)
    return r * loss_pos + (1 - r) * loss_neg, r


@register_algorithm("diffusion_nft")
class DiffusionNFT(ForwardProcessAlgorithm):
    paper = "DiffusionNFT: Online Diffusion Reinforcement with Forward Process (arXiv:2509.16117)"
    families = ("flow",)

    class Options(ForwardOptions):
        beta: float = Field(1.0, gt=0.0)  # b: how far the implicit policies sit from the old one
        adv_max: float = Field(5.0, gt=0.0)  # A_max: advantages at +-A_max give r = 1 / 0
        ema_rate: float = Field(1e-3, ge=0.0)  # old-policy decay d = min(ema_rate * iterations_done, ema_max)
        ema_max: float = Field(0.5, ge=0.0, lt=1.0)
        kl_beta: float = Field(1e-4, ge=0.0)  # E||v_theta - v_ref||^2 weight (the reference implementation's 1e-4)
        # the reference implementation trains on the sampling schedule's noise levels
        time_sampling: Literal["uniform", "logit_normal", "schedule"] = "schedule"

    def __init__(self, options) -> None:
        super().__init__(options)
        self.old: EMA | None = None
        self._loaded: dict[str, Any] | None = None
        self.iteration = 0  # the iteration in progress (on_iteration_start)
        self.updated_for = 0  # the iteration whose start-of-iteration update the old policy has received

    def on_iteration_start(self, iteration: int) -> None:
        super().on_iteration_start(iteration)
        self.iteration = iteration

    def decay(self, iteration: int) -> float:
        return min(self.options.ema_rate * max(iteration - 1, 0), self.options.ema_max)

    def _sync_old(self, generator) -> None:
        """Create the old policy on first use (from a loaded state when resuming), then give it this iteration's
        update. Done lazily because the algorithm meets the generator first in ``loss``."""
        if self.old is None:
            self.old = EMA(list(generator.named_trainable()), decay=0.0)
            if self._loaded is not None:
                self.old.load_state_dict(self._loaded["old"])
                self._loaded = None
        if self.updated_for < self.iteration:
            self.old.decay = self.decay(self.iteration)
            self.old.update()
            self.updated_for = self.iteration

    @contextlib.contextmanager
    def old_policy(self, generator) -> Iterator[None]:
        """Inside, the generator's trainable weights are the old policy's (under no_grad)."""
        self._sync_old(generator)
        assert self.old is not None
        with torch.no_grad(), self.old.swapped():
            yield

    def loss(self, batch, generator):
        opts = self.options
        noised = self.noise(batch, generator)
        # v_old first: swapping weights in place after the v_theta forward would invalidate its autograd graph
        with self.old_policy(generator):
            v_old = self.predict(generator, noised, batch)
        v_theta = self.predict(generator, noised, batch)
        per, r = nft_loss(v_theta, v_old, noised.target, batch.advantages, opts.beta, opts.adv_max)
        policy = masked_mean(noised.weight * per, batch.mask)  # in the network's output space (_forward_process)
        loss = policy
        with torch.no_grad():
            metrics = {
                "loss/policy": float(policy),
                "nft/r_mean": float(r.mean()),
                "nft/old_deviation": float(mean_over_data((v_theta - v_old) ** 2).mean()),
                "nft/old_decay": self.decay(self.iteration),
                "fm_loss": float(regression_loss(v_theta, noised).mean()),
                "noise_level/mean": float(noised.level.mean()),
            }
        return self.with_reference_penalty(loss, metrics, generator, noised, batch, v_theta, opts.kl_beta)

    def state_dict(self) -> dict[str, Any]:
        if self.old is None:
            return dict(self._loaded) if self._loaded is not None else {}
        return {"old": self.old.state_dict(), "updated_for": self.updated_for}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.updated_for = int(state["updated_for"])
        if self.old is not None:
            self.old.load_state_dict(state["old"])
        else:
            self._loaded = {"old": {k: v.clone() for k, v in state["old"].items()}, "updated_for": self.updated_for}

