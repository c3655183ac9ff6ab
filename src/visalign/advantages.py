"""Advantages from rewards: group normalisation (GRPO), per-reward group normalisation (GDPO), leave-one-out
(RLOO) and batch-whitened (REINFORCE++) baselines.

* ``group`` (GRPO, Shao et al., 2024; Flow-GRPO): A_i = clip((R_i - mean_group R) / (std + eps), -c, c), with the
  group's std (``std="group"``) or the std over the whole gathered batch (``std="global"``, flow_grpo's default), or
  no division at all (``std="none"``: A_i = R_i - mean_group R, Dr. GRPO, Liu et al., 2025, arXiv:2503.20783).
* ``gdpo``: each reward is normalised within its group first, then the weighted sum is normalised over the batch:
  S_i = sum_k w_k (r_k,i - mean_group r_k) / (std_group r_k + eps), A_i = clip((S_i - mean S) / (std S + eps), -c, c).
* ``rloo`` (Kool et al., 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"; Ahmadian et al., 2024,
  arXiv:2402.14740): each sample's baseline is the mean of the other G - 1 of its group,
  A_i = clip(R_i - (sum_g R - R_i) / (G - 1), -c, c) = clip(G / (G - 1) (R_i - mean_group R), -c, c); 0 in groups
  of one. ``std`` is not used.
* ``reinforce_pp``: REINFORCE++-baseline (Hu et al., 2025, arXiv:2501.03262, its variant for k > 1 samples per
  prompt): the group mean is subtracted, then the result is whitened over the whole batch, A~_i = R_i - m_g,
  A_i = clip((A~_i - mean_N A~) / (std_N A~ + eps), -c, c) (zero-variance groups included as zeros). Every
  sequence counts once; OpenRLHF whitens over answer tokens, which weighs each sequence by its length.

Every std is the population standard deviation (``correction=0``), as in GRPO implementations, unless
``std_correction=1``: the Bessel-corrected one (divide by N - 1), which DanceGRPO's code uses (``torch.std``'s
default) for its group std, x1.155 larger than the population std in groups of 4.

Rewards with several components are first combined by their weights (``group`` mode). Groups whose members all
received the same (combined) reward carry no signal: they are masked (advantage 0, no gradient) and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODES = ("group", "gdpo", "rloo", "reinforce_pp")


@dataclass
class Advantages:
    values: torch.Tensor  # [N] float32, zero where masked
    mask: torch.Tensor  # [N] bool, False for members of zero-variance groups
    zero_var_groups: int
    num_groups: int

    @property
    def zero_var_fraction(self) -> float:
        return self.zero_var_groups / max(self.num_groups, 1)

    def stats(self) -> dict[str, float]:
        kept = self.values[self.mask]
        return {
            "adv/mean": float(kept.mean()) if kept.numel() else 0.0,
            "adv/std": float(kept.std(unbiased=False)) if kept.numel() else 0.0,
            "adv/abs_max": float(kept.abs().max()) if kept.numel() else 0.0,
            "adv/zero_var_frac": self.zero_var_fraction,
        }


def _group_stats(values: torch.Tensor, groups: torch.Tensor, correction: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-member group mean, group std (divided by n - ``correction``; 0 in groups of one) and group index ->
    (mean[N], std[N], inverse[N])."""
    uniq, inverse = torch.unique(groups, return_inverse=True)
    count = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(values))
    total = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, values)
    mean = total / count
    sq = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, (values - mean[inverse]) ** 2)
    std = torch.sqrt(sq / (count - correction).clamp_min(1))
    return mean[inverse], std[inverse], inverse


def _zscore_in_groups(values: torch.Tensor, groups: torch.Tensor, std_mode: str, eps: float, correction: int = 0
                      ) -> torch.Tensor:
    mean, gstd, _ = _group_stats(values, groups, correction)
    if std_mode == "none":
        return values - mean
    std = values.std(correction=correction) if std_mode == "global" else gstd
    return (values - mean) / (std + eps)


def compute_advantages(
    rewards: dict[str, torch.Tensor],
    groups: torch.Tensor,
    weights: dict[str, float] | None = None,
    mode: str = "group",
    std: str = "group",
    clip: float = 5.0,
    eps: float = 1e-4,
    zero_var_tol: float = 1e-8,
    std_correction: int = 0,
) -> Advantages:
    """Advantages for N samples; ``rewards`` maps reward names to ``[N]`` tensors, ``groups`` is ``[N]`` ints."""
    if mode not in MODES:
        raise ValueError(f"advantage mode must be one of {', '.join(MODES)}, got '{mode}'")
    if std not in ("group", "global", "none"):
        raise ValueError(f"advantage std must be 'group', 'global' or 'none', got '{std}'")
    if std_correction not in (0, 1):
        raise ValueError(f"advantage std_correction must be 0 or 1, got {std_correction}")
    names = list(weights) if weights else list(rewards)[:1]
    w = weights or {names[0]: 1.0}
    r = {k: rewards[k].detach().double().flatten() for k in names}
    groups = groups.flatten()
    combined = sum(w[k] * r[k] for k in names)
    gmean, gstd, inverse = _group_stats(combined, groups)
    if mode == "group":
        adv = _zscore_in_groups(combined, groups, std, eps, std_correction)
    elif mode == "rloo":
        size = torch.zeros(int(inverse.max()) + 1 if inverse.numel() else 0, dtype=torch.float64)
        size = size.index_add_(0, inverse, torch.ones_like(combined))[inverse]
        adv = torch.where(size > 1, size / (size - 1).clamp_min(1) * (combined - gmean), torch.zeros_like(combined))
    elif mode == "reinforce_pp":
        centred = combined - gmean
        adv = (centred - centred.mean()) / (centred.std(unbiased=False) + eps)
    else:
        per = sum(w[k] * _zscore_in_groups(r[k], groups, "group", eps) for k in names)
        adv = (per - per.mean()) / (per.std(unbiased=False) + eps)
    adv = adv.clamp(-clip, clip)
    mask = gstd > zero_var_tol
    adv = torch.where(mask, adv, torch.zeros_like(adv))
    num_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    zero_groups = num_groups - int(torch.unique(inverse[mask]).numel())
    return Advantages(values=adv.float(), mask=mask, zero_var_groups=zero_groups, num_groups=num_groups)
