"""Diffusion-DPO (Wallace et al., 2023, "Diffusion Model Alignment Using Direct Preference Optimization",
arXiv:2311.12908).

DPO's closed-form policy (pi_theta / pi_ref proportional to exp(r / beta)) with the log-likelihoods of a
diffusion model bounded by its denoising errors. For a pair (x_w preferred to x_l, same prompt), one shared noise
eps and time t:

    mse_m(x) = mean_{C,H,W} ||target - out_m(x_t, t)||^2                           m in {theta, ref}
    L        = -log sigmoid(-beta/2 [(mse_theta(w) - mse_ref(w)) - (mse_theta(l) - mse_ref(l))])

target = eps (epsilon prediction) / v (v prediction) for diffusion models, the flow-matching velocity eps - x_0 for
flow models. ``loss_type`` swaps the link as in TRL's DPO trainer (huggingface/trl ``DPOTrainer``), on the
margin u = -1/2 [...]: ``sigmoid`` -log sigmoid(beta u), ``hinge`` relu(1 - beta u), ``ipo`` (u - 1/(2 beta))^2
(beta is then IPO's tau, on its own scale). beta = 5000 for SD1.5 / SDXL in the paper (2500-5000 at SD scale);
smaller models need their own value. The reference is ``generator.reference()``.

Pairs:

* **online** (``dataset`` unset): each group of a rollout gives its best and worst member by the (weighted)
  reward; groups whose best and worst tie give none. The pairs are formed over the whole rollout and a pair is
  trained in the minibatch that holds its winner (so minibatches need not hold whole groups), weighted so that the
  trainer's per-sample accounting averages over pairs: with one minibatch per iteration the loss is exactly the
  mean over pairs.
* **offline** (``dataset: pairs.jsonl|.parquet``): Pick-a-Pic-style pairs (``visalign.preference_data``); the
  images are encoded through the VAE, each iteration trains on ``prompts_per_iter x group_size`` pairs.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from visalign.algorithms._forward_process import combined_reward
from visalign.algorithms._preference import (
    OfflineBatch,
    OfflineItem,
    PairBatch,
    PreferenceAlgorithm,
    PreferenceOptions,
    best_worst_pairs,
    dpo_loss,
)
from visalign.algorithms.base import register_algorithm
from visalign.preference_data import load_preference_pairs
from visalign.rollout import Rollout


@register_algorithm("diffusion_dpo")
class DiffusionDPO(PreferenceAlgorithm):
    paper = "Diffusion Model Alignment Using Direct Preference Optimization (arXiv:2311.12908)"

    class Options(PreferenceOptions):
        beta: float = Field(5000.0, gt=0)
        loss_type: Literal["sigmoid", "hinge", "ipo"] = "sigmoid"

    def __init__(self, options: PreferenceOptions) -> None:
        super().__init__(options)
        self._pairs: tuple[torch.Tensor, torch.Tensor, float] | None = None  # this iteration's rollout pairs

    def on_iteration_start(self, iteration: int) -> None:
        super().on_iteration_start(iteration)
        self._pairs = None

    def _rollout_pairs(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(winners, losers, samples per pair), formed once per rollout."""
        if self._pairs is None:
            reward = combined_reward(rollout.rewards, self.context).cpu()
            groups = rollout.group_ids.cpu()
            winners, losers = best_worst_pairs(reward, groups)
            paired = int(torch.isin(groups, groups[winners]).sum()) if len(winners) else 0
            self._pairs = (winners, losers, paired / max(len(winners), 1))
        return self._pairs

    def _online(self, rollout: Rollout, indices: torch.Tensor) -> tuple[PairBatch, list[int]] | None:
        winners, losers, per_pair = self._rollout_pairs(rollout)
        here = torch.isin(winners, indices.cpu())
        if not here.any():
            return None
        w, lo = winners[here], losers[here]
        # each pair stands for the samples of its group: weight per_pair / |minibatch| keeps the trainer's
        # per-sample normalisation (a sum over the samples of a step, divided by their number) a mean over pairs
        weight = torch.full((len(w),), per_pair / len(indices), device=rollout.final_latents.device)
        batch = PairBatch(x0_w=rollout.final_latents[w], x0_l=rollout.final_latents[lo], cond=rollout.cond.select(w),
                          seeds=rollout.seeds[w], weight=weight)
        return batch, w.tolist()

    def _offline(self, data: OfflineBatch, indices: torch.Tensor) -> tuple[PairBatch, list[int]]:
        i = indices.cpu()
        weight = torch.full((len(i),), 1.0 / len(i), device=data.latents.device)
        batch = PairBatch(x0_w=data.latents[i, 0], x0_l=data.latents[i, 1], cond=data.cond.select(i),
                          seeds=data.seeds[i], weight=weight)
        return batch, i.tolist()

    def _load(self, path: str, verify_images: bool) -> list[OfflineItem]:
        return [OfflineItem(p.caption, (p.winner, p.loser)) for p in load_preference_pairs(path, verify_images)]

    def loss(self, batch: PairBatch, generator):
        p = len(batch.seeds)
        both = torch.arange(p).repeat(2)  # winners then losers, sharing the pair's seed: the same eps and t
        x0 = torch.cat([batch.x0_w, batch.x0_l])
        mse, ref = self.denoising_errors(generator, x0, batch.seeds[both], batch.cond.select(both))
        per_pair, margin = dpo_loss(mse[:p], mse[p:], ref[:p], ref[p:], self.options.beta, self.options.loss_type)
        loss = (per_pair * batch.weight).sum()
        with torch.no_grad():
            metrics = {
                "loss": float(per_pair.mean()),  # the mean over pairs (log 2 while the policy is the reference)
                "dpo/margin": float(margin.mean()),
                "dpo/implicit_acc": float((margin > 0).float().mean()),
                "dpo/pairs": float(p),
                "mse/winner": float(mse[:p].mean()),
                "mse/loser": float(mse[p:].mean()),
                "mse_ref/winner": float(ref[:p].mean()),
                "mse_ref/loser": float(ref[p:].mean()),
            }
        return loss, metrics
