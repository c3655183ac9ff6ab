"""DiffusionNFT (Zheng et al., 2025, "DiffusionNFT: Online Diffusion Reinforcement with Forward Process",
arXiv:2509.16117).

Rollouts by any solver (the ODE is the natural choice), without CFG and without likelihoods; only the final
samples are kept. Each sample x_0 is noised with the forward process, x_t = (1 - t) x_0 + t eps, and the policy
v_theta is contrasted with the old policy v_old (an EMA of the trained weights):

    v+ = (1 - b) v_old + b v_theta          (implicit positive policy)
    v- = (1 + b) v_old - b v_theta          (implicit negative policy)
    r  = clip(A / (2 A_max) + 1/2, 0, 1)     (optimality probability from the advantage, A clipped to +-A_max)

``loss_form="reference"`` (the default) is the authors' code (NVlabs/DiffusionNFT, ``train_nft_sd3.py``): the
error is measured on the x_0 each implicit policy predicts, x0+- = x_t - t v+-, each branch's squared error divided
by its own detached mean absolute error, and the whole scaled by A_max / b:

    w+- = max(mean_d |x0+- - x_0|, 1e-5)   (no gradient)
    L   = (A_max / b) E[ r mean_d (x0+ - x_0)^2 / w+ + (1 - r) mean_d (x0- - x_0)^2 / w- ]

``loss_form="velocity"`` is the paper's equation as written, in the network's output space (``_forward_process``):
L = E[ r ||v+ - v||^2 + (1 - r) ||v- - v||^2 ] with v = eps - x_0 (||.||^2 averaged over the data dimensions).
The self-normalisation makes the reference's policy term about unit size whatever the error scale, which is what
its ``kl_beta = 1e-4`` is set against; with ``velocity`` the same kl_beta weighs 11-170x more against the policy
term. Both add kl_beta E||v_theta - v_ref||^2 to the reference (in velocity space for ``reference``, as its code
does; in output space for ``velocity``). Samples with A >= A_max only pull v+ towards the data, samples with
A <= -A_max only push v- towards it.

The old policy starts equal to the policy; before the rollout of each later iteration it moves,
old <- d old + (1 - d) theta with d = min(ema_rate * n, ema_max), n the optimizer steps taken so far (the
reference's ``return_decay(global_step)``, decay type 1 by default). Rollouts are drawn with the old policy
(``rollout_policy="old"``, as the reference does; ``"current"``: with the trained weights). It is kept here and saved
with the algorithm's state, so a resume is exact; to evaluate v_old its weights are swapped into the trainable
parameters under no_grad.
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


def optimality(advantages: torch.Tensor, adv_max: float) -> torch.Tensor:
    """r = clip(A / (2 A_max) + 1/2, 0, 1), ``[B]``."""
    return torch.clamp(advantages.float() / (2 * adv_max) + 0.5, 0.0, 1.0)


def implicit_policies(v_theta: torch.Tensor, v_old: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """v+ and v- from the policy's and the (detached) old policy's predictions."""
    v_theta, v_old = v_theta.float(), v_old.float().detach()
    return (1 - beta) * v_old + beta * v_theta, (1 + beta) * v_old - beta * v_theta


def nft_loss(
    v_theta: torch.Tensor, v_old: torch.Tensor, target: torch.Tensor, advantages: torch.Tensor, beta: float,
    adv_max: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's per-sample NFT loss ``[B]`` in velocity space, and the optimality probabilities r ``[B]``."""
    positive, negative = implicit_policies(v_theta, v_old, beta)
    r = optimality(advantages, adv_max)
    loss_pos = mean_over_data((positive - target) ** 2)
    loss_neg = mean_over_data((negative - target) ** 2)
    return r * loss_pos + (1 - r) * loss_neg, r


def self_normalised_error(x0_prediction: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """mean_d (x0_hat - x0)^2 / max(mean_d |x0_hat - x0|, 1e-5), the divisor detached (computed in float64)."""
    with torch.no_grad():
        scale = mean_over_data((x0_prediction.double() - x0.double()).abs()).clamp_min(1e-5)
    return mean_over_data((x0_prediction - x0) ** 2) / scale.to(x0_prediction.dtype)


def nft_reference_loss(
    v_theta: torch.Tensor, v_old: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, x0: torch.Tensor,
    advantages: torch.Tensor, beta: float, adv_max: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference code's per-sample loss ``[B]`` (x_0 space, self-normalised, x A_max / b) and r ``[B]``."""
    positive, negative = implicit_policies(v_theta, v_old, beta)
    r = optimality(advantages, adv_max)
    s = sigma.float().view(-1, *([1] * (x_t.dim() - 1)))
    x_t, x0 = x_t.float(), x0.float()
    loss_pos = self_normalised_error(x_t - s * positive, x0)
    loss_neg = self_normalised_error(x_t - s * negative, x0)
    return (r * loss_pos + (1 - r) * loss_neg) * (adv_max / beta), r


@register_algorithm("diffusion_nft")
class DiffusionNFT(ForwardProcessAlgorithm):
    paper = "DiffusionNFT: Online Diffusion Reinforcement with Forward Process (arXiv:2509.16117)"
    families = ("flow",)

    class Options(ForwardOptions):
        beta: float = Field(1.0, gt=0.0)  # b: how far the implicit policies sit from the old one
        adv_max: float = Field(5.0, gt=0.0)  # A_max: advantages at +-A_max give r = 1 / 0
        ema_rate: float = Field(1e-3, ge=0.0)  # old-policy decay d = min(ema_rate * optimizer_steps, ema_max)
        ema_max: float = Field(0.5, ge=0.0, lt=1.0)
        kl_beta: float = Field(1e-4, ge=0.0)  # E||v_theta - v_ref||^2 weight (the reference implementation's 1e-4)
        loss_form: Literal["reference", "velocity"] = "reference"  # the authors' code / the paper's equation
        rollout_policy: Literal["old", "current"] = "old"  # the weights rollouts are drawn with
        # the reference implementation trains on the sampling schedule's noise levels
        time_sampling: Literal["uniform", "logit_normal", "schedule"] = "schedule"

    def __init__(self, options) -> None:
        super().__init__(options)
        self.old: EMA | None = None
        self._loaded: dict[str, Any] | None = None
        self.iteration = 0  # the iteration in progress (on_iteration_start)
        self.updated_for = 0  # the iteration whose start-of-iteration update the old policy has received
        self.optimizer_steps = 0  # taken so far (the decay schedule's clock)

    def on_iteration_start(self, iteration: int) -> None:
        super().on_iteration_start(iteration)
        self.iteration = iteration

    def on_optimizer_step(self) -> None:
        self.optimizer_steps += 1

    def decay(self) -> float:
        return min(self.options.ema_rate * self.optimizer_steps, self.options.ema_max)

    def rollout_weights(self, generator):
        return self.old_policy(generator) if self.options.rollout_policy == "old" else contextlib.nullcontext()

    def _sync_old(self, generator) -> None:
        """Create the old policy on first use (from a loaded state when resuming), then give it this iteration's
        update. Done lazily because the algorithm meets the generator first in the rollout or in ``loss``."""
        if self.old is None:
            self.old = EMA(list(generator.named_trainable()), decay=0.0)
            if self._loaded is not None:
                self.old.load_state_dict(self._loaded["old"])
                self._loaded = None
        if self.updated_for < self.iteration:
            self.old.decay = self.decay()
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
        reference = opts.loss_form == "reference"
        if reference:
            sigma = noised.level
            x0 = noised.x_t.float() - sigma.view(-1, *([1] * (noised.x_t.dim() - 1))) * noised.target
            per, r = nft_reference_loss(v_theta, v_old, noised.x_t, sigma, x0, batch.advantages, opts.beta,
                                        opts.adv_max)
        else:
            per, r = nft_loss(v_theta, v_old, noised.target, batch.advantages, opts.beta, opts.adv_max)
            per = noised.weight * per  # in the network's output space (_forward_process)
        policy = masked_mean(per, batch.mask)
        loss = policy
        with torch.no_grad():
            metrics = {
                "loss/policy": float(policy),
                "nft/r_mean": float(r.mean()),
                "nft/old_deviation": float(mean_over_data((v_theta - v_old) ** 2).mean()),
                "nft/old_decay": self.old.decay if self.old is not None else 0.0,
                "fm_loss": float(regression_loss(v_theta, noised).mean()),
                "noise_level/mean": float(noised.level.mean()),
            }
        return self.with_reference_penalty(loss, metrics, generator, noised, batch, v_theta, opts.kl_beta,
                                           weighted=not reference)

    def state_dict(self) -> dict[str, Any]:
        if self.old is None:
            return dict(self._loaded) if self._loaded is not None else {}
        return {"old": self.old.state_dict(), "updated_for": self.updated_for,
                "optimizer_steps": self.optimizer_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.updated_for = int(state["updated_for"])
        # a checkpoint of a release that counted iterations (decay rate * finished iterations at the next start)
        self.optimizer_steps = int(state.get("optimizer_steps", self.updated_for))
        if self.old is not None:
            self.old.load_state_dict(state["old"])
        else:
            self._loaded = {"old": {k: v.clone() for k, v in state["old"].items()}, "updated_for": self.updated_for,
                            "optimizer_steps": self.optimizer_steps}

