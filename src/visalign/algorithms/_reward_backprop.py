"""Differentiable sampling shared by the reward back-propagation algorithms (ReFL, DRaFT, AlignProp).

These algorithms need no likelihoods: they differentiate the reward of a sample with respect to the
generator's parameters, through the sampler itself. Inside ``loss`` the batch's samples are generated again,
from the same per-sample seeds as the (no-grad) rollout, with the family's deterministic kernel (flow: the ODE
Euler step x' = x + v dt; diffusion: DDIM with eta = 0):

    z^0     ~ N(0, I) from seed_b                     (the rollout's initial noise, bit for bit)
    z^{i+1} = step(z^i, f_theta(z^i, t_i))            no grad for i <  S - K, with grad for i >= S - K
    r       = sum_k w_k r_k(decode(z^S))              over the differentiable rewards with weight w_k != 0

so the gradient reaches theta only through the last K network evaluations (truncated back-propagation);
K = S is the full back-propagation. Before any update the re-generated images are the rollout's images
(when the rollout is deterministic too: kernel ``ode``, or ``ddim`` with noise_level 0).

``checkpointing`` wraps every step with grad (and the decode) in ``torch.utils.checkpoint``: the activations
of a step are recomputed during the backward pass instead of stored, so peak memory no longer grows with the
network's activations times K (only each step's input latents are kept; the backward pass holds one step's
activations, or the decoder's, at a time), at the price of one more forward pass per step. It gives the same
gradients (a test).

Randomness beyond the initial noise (ReFL's step, AlignProp's K, DRaFT-LV's re-noising) comes from seeded
generators: per-sample ones continue the sample's own stream; per-batch draws use ``batch_generator``,
seeded from the batch's sample seeds, so a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from visalign.algorithms.base import Algorithm, RunContext
from visalign.errors import UserError
from visalign.sampling.samplers import DifferentiableSampler
from visalign.seeding import seed_from_key, torch_generator

if TYPE_CHECKING:
    from visalign.models.base import Generator
    from visalign.rewards.base import Reward
    from visalign.rollout import SampleBatch


def batch_generator(seeds: torch.Tensor, stream: str) -> torch.Generator:
    """A generator seeded from (stream, the batch's sample seeds): one draw per batch, reproducible on resume."""
    return torch_generator(seed_from_key(f"{stream}:" + ",".join(str(int(s)) for s in seeds.tolist())))


def differentiable_rewards(rewards: Sequence[tuple[Reward, float]], algorithm: str) -> list[tuple[Reward, float]]:
    """The (reward, weight) pairs the gradient comes from: differentiable rewards with a non-zero weight.

    A non-differentiable reward with a non-zero weight is an error (it would be silently left out of the
    objective): give it weight 0 to log it only, e.g. a verifier next to the learned reward it is checked against.
    """
    used = []
    for reward, weight in rewards:
        name = getattr(reward, "name", type(reward).__name__)
        if weight == 0:
            continue
        if not getattr(reward, "differentiable", False):
            raise UserError(f"algorithm '{algorithm}' back-propagates the reward, but reward '{name}' is not "
                            f"differentiable: give it weight 0 to log it only, or use a differentiable reward")
        if getattr(reward, "groupwise", False):
            raise UserError(f"algorithm '{algorithm}': reward '{name}' scores whole groups, which cannot be "
                            f"back-propagated per sample")
        used.append((reward, float(weight)))
    if not used:
        names = ", ".join(f"'{getattr(r, 'name', type(r).__name__)}'" for r, _ in rewards) or "none"
        raise UserError(f"algorithm '{algorithm}' needs a differentiable reward with a non-zero weight "
                        f"(configured: {names}); e.g. shapes_rm for ShapesWorld")
    return used


class RewardBackprop(Algorithm):
    """Base of the reward back-propagation algorithms: reward check at ``bind``, the sampler, the scoring."""
    approach = "reward backprop"

    needs = frozenset({"differentiable"})
    # The rollout only logs rewards; with the deterministic kernel its images are the ones trained on.
    kernels = ("ode", "ddim")

    def bind(self, context: RunContext) -> None:
        super().bind(context)
        self.used_rewards = differentiable_rewards(context.rewards, self.name)
        self.schedule = context.schedule
        self.kernel = context.deterministic_kernel

    def sampler(self, generator: Generator) -> DifferentiableSampler:
        return DifferentiableSampler(generator, self.schedule, self.kernel,
                                     getattr(self.options, "checkpointing", False))

    def score(self, images: torch.Tensor, batch: SampleBatch,
              repeat: int = 1) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of the differentiable rewards of ``images`` ([repeat * B]), with grad; per-reward means."""
        prompts, metadata = list(batch.prompts) * repeat, list(batch.metadata) * repeat
        total = torch.zeros(images.shape[0], device=images.device)
        metrics = {}
        for reward, weight in self.used_rewards:
            scores = reward(images, prompts, metadata)
            main = next(iter(scores.values())).float().to(images.device)
            total = total + weight * main
            metrics[f"backprop/{reward.name}"] = float(main.detach().mean())
        return total, metrics
