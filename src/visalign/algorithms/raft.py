"""RAFT (Dong et al., 2023, "RAFT: Reward rAnked FineTuning for Generative Foundation Model Alignment",
arXiv:2304.06767).

Sample G images per prompt, keep the k best of each group, fine-tune on them with the ordinary supervised loss
(the denoising / flow-matching loss on forward-noised copies of the kept final samples):

    L = mean_i 1[i in top-k of its group] ||f_theta(x_t, t) - target_i||^2

with target eps - x_0 (flow) or eps / v (diffusion). Samples are ranked by their advantage, which within a group
orders samples as the run's (weighted) reward does. The mean is over the minibatch (kept samples count, the others
contribute zero), so the effective learning rate scales with k / G. The loss is RWR's with 0/1 weights.
"""

from __future__ import annotations

import torch
from pydantic import Field

from visalign.algorithms._forward_process import ForwardOptions, ForwardProcessAlgorithm
from visalign.algorithms.base import register_algorithm


def top_k_per_group(scores: torch.Tensor, group_ids: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k highest scores of each group (ties: the earlier sample)."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    for gid in group_ids.unique():
        idx = (group_ids == gid).nonzero().flatten()
        order = torch.sort(scores[idx], descending=True, stable=True).indices
        keep[idx[order[:k]]] = True
    return keep


@register_algorithm("raft")
class RAFT(ForwardProcessAlgorithm):
    paper = "RAFT: Reward rAnked FineTuning for Generative Foundation Model Alignment (arXiv:2304.06767)"

    class Options(ForwardOptions):
        top_k: int = Field(1, ge=1)  # samples kept per group

    def select(self, rollout, indices):
        """Ranking needs whole groups, but a minibatch may hold part of one: rank on the whole rollout, then keep
        the minibatch's share (the others are masked out)."""
        keep = top_k_per_group(rollout.advantages.cpu(), rollout.group_ids.cpu(), self.options.top_k)
        batch = rollout.sample_batch(indices)
        batch.mask = batch.mask & keep[indices].to(batch.mask.device)
        return batch

    def loss(self, batch, generator):
        mask = batch.mask.float()
        loss, metrics = self.weighted_regression(batch, generator, mask / len(mask))
        metrics["raft/kept_frac"] = float(mask.mean())
        return loss, metrics
