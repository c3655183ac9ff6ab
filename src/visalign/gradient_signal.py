"""How much signal a recipe's policy gradient holds at its base: the agreement of two halves of one rollout.

``visalign signal --config RECIPE [--rollouts 3] [--splits 8] [--shuffle-rewards] [key=value ...]``

Rolls out iterations of the recipe at the base weights (the trainer's own ``collect``: rollout, rewards, advantages;
no update is made), splits each rollout's groups at random into halves A and B, and takes the algorithm's loss
gradient over the trainable parameters on each half (every micro-batch, as the trainer's minibatches do). If each
half's gradient is the true direction g plus independent noise of variance s^2 / (n / 2) (n samples in all), their
cosine is

    cos = r n / (r n + 2),      r = |g|^2 / s^2  (the per-sample signal-to-noise ratio),

so r = 2 cos / (n (1 - cos)), and 1 / r samples make a gradient as much signal as noise. ``cos`` near 0
is pure noise. ``--shuffle-rewards`` permutes the rewards within each group before the advantages are computed:
a reward that no longer depends on the image, the noise floor to compare with. A negative mean cosine reads as no
signal (r reported as 0).

The run also reports what decides whether groups can carry signal at all: the share of zero-variance groups (every
member scored the same: no gradient) and the reward's mean and within-group spread.
"""

from __future__ import annotations

import math
import statistics
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

import torch

from visalign.trainer import Trainer


@dataclass
class RolloutSignal:
    iteration: int
    samples: int
    cosine: float  # mean over the splits
    cosine_sd: float
    per_sample_snr: float  # r = 2 cos / (n (1 - cos)); 0 when cos <= 0
    zero_var_groups: float  # share of groups whose members all scored the same
    reward_mean: float
    reward_within_sd: float  # mean over groups of the population std of the main reward


def snr_from_cosine(cosine: float, samples: int) -> float:
    """r = 2 cos / (n (1 - cos)) for two halves of n samples; 0 for cos <= 0 (no signal measured)."""
    if cosine <= 0:
        return 0.0
    if cosine >= 1:
        return math.inf
    return 2 * cosine / (samples * (1 - cosine))


def loss_gradient(trainer: Trainer, rollout: Any, indices: torch.Tensor) -> torch.Tensor:
    """The algorithm's loss gradient over ``indices`` of ``rollout``, flattened over the trainable parameters."""
    params = trainer.generator.trainable_parameters()
    for p in params:
        p.grad = None
    micro = list(trainer.algorithm.micro_batches(rollout, indices))
    for mb in micro:
        loss, _ = trainer.algorithm.loss(mb, trainer.generator)
        (loss / len(micro)).backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float() for p in params])


def _shuffle_within_groups(scores: dict[str, torch.Tensor], groups: torch.Tensor, seed: int
                           ) -> dict[str, torch.Tensor]:
    """Every score permuted within each group, one permutation for all of a sample's scores (they move together)."""
    g = torch.Generator().manual_seed(seed)
    source = torch.arange(len(groups))
    for group in groups.unique():
        idx = (groups == group).nonzero().flatten()
        source[idx] = idx[torch.randperm(len(idx), generator=g)]
    return {name: values[source] for name, values in scores.items()}


def within_group_sd(values: torch.Tensor, groups: torch.Tensor) -> float:
    """The mean over groups of the population std of ``values`` inside each group."""
    return statistics.mean(float(values[groups == g].double().std(unbiased=False)) for g in groups.unique())


def measure(trainer: Trainer, rollouts: int = 3, splits: int = 8, shuffle_rewards: bool = False,
            on_rollout: Any = None) -> list[RolloutSignal]:
    """The signal of ``rollouts`` iterations of ``trainer``'s recipe at its current weights (none are updated)."""
    from visalign.rewards.scoring import reward_name

    rows = []
    main_name = reward_name(trainer.rewards[0][0])
    for it in range(1, rollouts + 1):
        trainer.algorithm.on_iteration_start(it)
        collected = trainer.collect(it)
        rollout = collected.rollout
        groups = rollout.group_ids.cpu()
        if shuffle_rewards:
            scores = _shuffle_within_groups(rollout.rewards, groups, seed=1234 + it)
            adv = trainer.advantages_of(scores, groups)
            rollout.advantages, rollout.mask = adv.values.to(rollout.device), adv.mask.to(rollout.device)
            rollout.rewards = scores
        else:
            adv = collected.advantages
        unique = groups.unique()
        trainer.generator.denoiser.train()
        cosines = []
        for split in range(splits):
            perm = unique[torch.randperm(len(unique), generator=torch.Generator().manual_seed(split))]
            half_a = set(perm[: len(perm) // 2].tolist())
            in_a = torch.tensor([int(g) in half_a for g in groups])
            idx_a, idx_b = in_a.nonzero().flatten(), (~in_a).nonzero().flatten()
            g_a, g_b = loss_gradient(trainer, rollout, idx_a), loss_gradient(trainer, rollout, idx_b)
            cosines.append(float(torch.nn.functional.cosine_similarity(g_a, g_b, dim=0)))
        trainer.generator.denoiser.eval()
        for p in trainer.generator.trainable_parameters():
            p.grad = None
        cos = statistics.mean(cosines)
        reward = rollout.rewards[main_name].cpu()
        row = RolloutSignal(it, len(rollout), cos, statistics.pstdev(cosines), snr_from_cosine(cos, len(rollout)),
                            adv.zero_var_fraction, float(reward.float().mean()), within_group_sd(reward, groups))
        rows.append(row)
        if on_rollout is not None:
            on_rollout(row)
    return rows


def summarise(rows: list[RolloutSignal]) -> dict[str, Any]:
    """Means over the rollouts; the SNR of the mean cosine (the per-rollout r is too noisy to average)."""
    cos = statistics.mean(r.cosine for r in rows)
    n = rows[0].samples
    se = statistics.stdev(r.cosine for r in rows) / math.sqrt(len(rows)) if len(rows) > 1 else math.nan
    return {"rollouts": len(rows), "samples": n, "cosine": cos, "cosine_se": se,
            "per_sample_snr": snr_from_cosine(cos, n),
            "zero_var_groups": statistics.mean(r.zero_var_groups for r in rows),
            "reward_mean": statistics.mean(r.reward_mean for r in rows),
            "reward_within_sd": statistics.mean(r.reward_within_sd for r in rows),
            "per_rollout": [asdict(r) for r in rows]}


def signal_of_recipe(config: str, overrides: list[str], rollouts: int = 3, splits: int = 8,
                     shuffle_rewards: bool = False, on_rollout: Any = None) -> dict[str, Any]:
    """``measure`` on a fresh trainer of the recipe at ``config`` (a temporary run folder, no evaluation)."""
    from visalign.config import load_train_config

    run_dir = tempfile.mkdtemp(prefix="visalign_signal_")
    cfg = load_train_config(config, [*overrides, f"run_dir={run_dir}", "eval.enabled=false", "checkpoint.every=0",
                                     "log.progress=false"])
    trainer = Trainer(cfg)
    try:
        rows = measure(trainer, rollouts, splits, shuffle_rewards, on_rollout)
    finally:
        trainer.close()
    return {"config": str(config), "overrides": overrides, "shuffle_rewards": shuffle_rewards, **summarise(rows)}
