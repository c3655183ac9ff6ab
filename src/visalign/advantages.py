"""Advantages from rewards: group normalisation (GRPO) or per-reward group normalisation (GDPO).

* ``group`` (GRPO, Shao et al., 2024; Flow-GRPO): A_i = clip((R_i - mean_group R) / (std + eps), -c, c), with the
  group's std (``std="group"``) or the std over the whole gathered batch (``std="global"``, flow_grpo's default), or
  no division at all (``std="none"``: A_i = R_i - mean_group R, Dr. GRPO, Liu et al., 2025, arXiv:2503.20783).
* ``gdpo``: each reward is normalised within its group first, then the weighted sum is normalised over the batch:
  S_i = sum_k w_k (r_k,i - mean_group r_k) / (std_group r_k + eps), A_i = clip((S_i - mean S) / (std S + eps), -c, c).

Every std is the population standard deviation (``unbiased=False``), as in GRPO implementations.

Rewards with several components are first combined by their weights (``group`` mode). Groups whose members all
received the same (combined) reward carry no signal: they are masked (advantage 0, no gradient) and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


def _group_stats(values: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-member group mean, group (population) std and group index -> (mean[N], std[N], inverse[N])."""
    uniq, inverse = torch.unique(groups, return_inverse=True)
    count = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(values))
    total = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, values)
    mean = total / count
    sq = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, (values - mean[inverse]) ** 2)
    std = torch.sqrt(sq / count)
    return mean[inverse], std[inverse], inverse


def _zscore_in_groups(values: torch.Tensor, groups: torch.Tensor, std_mode: str, eps: float) -> torch.Tensor:
    mean, gstd, _ = _group_stats(values, groups)
    if std_mode == "none":
        return values - mean
    std = values.std(unbiased=False) if std_mode == "global" else gstd
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
) -> Advantages:
    """Advantages for N samples; ``rewards`` maps reward names to ``[N]`` tensors, ``groups`` is ``[N]`` ints."""
    if mode not in ("group", "gdpo"):
        raise ValueError(f"advantage mode must be 'group' or 'gdpo', got '{mode}'")
    if std not in ("group", "global", "none"):
        raise ValueError(f"advantage std must be 'group', 'global' or 'none', got '{std}'")
    names = list(weights) if weights else list(rewards)[:1]
    w = weights or {names[0]: 1.0}
    r = {k: rewards[k].detach().double().flatten() for k in names}
    groups = groups.flatten()
    combined = sum(w[k] * r[k] for k in names)
    _, gstd, inverse = _group_stats(combined, groups)
    if mode == "group":
        adv = _zscore_in_groups(combined, groups, std, eps)
    else:
        per = sum(w[k] * _zscore_in_groups(r[k], groups, "group", eps) for k in names)
        adv = (per - per.mean()) / (per.std(unbiased=False) + eps)
    adv = adv.clamp(-clip, clip)
    mask = gstd > zero_var_tol
    adv = torch.where(mask, adv, torch.zeros_like(adv))
    num_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    zero_groups = num_groups - int(torch.unique(inverse[mask]).numel())
    return Advantages(values=adv.float(), mask=mask, zero_var_groups=zero_groups, num_groups=num_groups)
