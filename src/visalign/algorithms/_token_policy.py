"""The GRPO family for token policies (language / vision-language models) as one objective with options.

Inputs are per-token ``[B, T]`` tensors over the answer columns: ``log_probs`` (current policy, with grad),
``old_log_probs`` (the rollout policy), optionally ``ref_log_probs`` (the reference policy), ``mask`` (1 on answer
tokens, 0 on prompt and padding), and the advantages ``A_i`` of each sequence ``[B]`` (or of each token ``[B, T]``
where the ratio is per token). With L_i = sum_t mask_it the answer length of sequence i:

    r_it    = exp(log pi_theta(y_it) - log pi_old(y_it))                                   (ratio_level="token")
    s_i     = exp((1 / L_i) sum_t mask_it (log pi_theta(y_it) - log pi_old(y_it)))       (ratio_level="sequence")
    l_it    = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))   with r = r_it, or r = s_i for every token of i
    kl_it   = k3: exp(ref_it - logp_it) - (ref_it - logp_it) - 1;   k1: logp_it - ref_it;   k2: (logp - ref)^2 / 2
    loss    = AGG(l + beta kl)

and AGG, the aggregation over the batch (``loss_agg``):

    seq_mean_token_mean      (1 / B) sum_i (1 / L_i) sum_t mask_it x_it            GRPO's 1/G sum_i 1/|o_i| sum_t
    token_mean               (1 / sum_i L_i) sum_i sum_t mask_it x_it              DAPO's token-level average
    seq_mean_token_sum_norm  (1 / B) sum_i (1 / L_max) sum_t mask_it x_it          Dr. GRPO, L_max a constant

The variants, as options of that one loss (``algorithms/grpo.py`` registers each paper's setting as an algorithm):

* GRPO (Shao et al., 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
  arXiv:2402.03300): token ratio, symmetric clip (eps = 0.2, PPO's; Schulman et al., 2017, arXiv:1707.06347),
  ``seq_mean_token_mean``, KL to the reference with the k3 estimator inside the objective, beta = 0.04; advantages
  (R_i - mean_group R) / std_group R (``token_advantages(mode="grpo")``).
* DAPO (Yu et al., 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", arXiv:2503.14476):
  clip-higher, eps_low = 0.2 < eps_high = 0.28, so that low-probability tokens can grow (``clip_high``);
  ``token_mean``, so that every token of the batch weighs the same whatever its answer's length; no KL. Dynamic
  sampling, DAPO's third change, is a rollout filter: ``dynamic_sampling_keep`` gives the groups it keeps
  (0 < accuracy < 1, i.e. non-zero reward variance). Its overlong reward shaping is a reward, not part of the loss.
* Dr. GRPO (Liu et al., 2025, "Understanding R1-Zero-Like Training: A Critical Perspective", arXiv:2503.20783):
  dividing by |o_i| favours long wrong answers and short right ones, dividing by std_group favours groups that are
  nearly all right or all wrong; both are removed: ``seq_mean_token_sum_norm`` with a constant ``max_length`` (the
  generation budget, as the paper's code does: it only rescales) and advantages R_i - mean_group R
  (``token_advantages(mode="dr_grpo")``).
* GSPO (Zheng et al., 2025, "Group Sequence Policy Optimization", arXiv:2507.18071): the importance ratio is that of
  the whole answer, length-normalised, s_i = (pi_theta(y_i) / pi_old(y_i))^(1 / |y_i|), clipped per sequence with
  small ranges (3e-4, 4e-4 in the paper), J = (1/G) sum_i min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i),
  whose gradient is s_i A_i (1 / |y_i|) sum_t grad log pi_theta(y_it) on unclipped sequences: every token of an
  answer gets the same weight (``ratio_level="sequence"``, ``loss_agg="seq_mean_token_mean"`` gives J exactly).
  GSPO-token (``ratio_level="sequence_token"``) takes s_it = sg[s_i] pi_theta(y_it) / sg[pi_theta(y_it)], equal to
  s_i in value and gradient, and admits per-token advantages ``[B, T]``.

The ratio is computed from the raw log-ratio and every metric about it is stated on that: on the first inner step
of an iteration logp == logp_old, so ``log_ratio_abs_max`` is 0 and the loss is -AGG(A) (the trainer asserts it).

Masked positions are selected away (``torch.where``) before anything is exponentiated, so padding may hold any
value, inf included, and gets exactly zero gradient.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from visalign.advantages import compute_advantages
from visalign.algorithms.common import kl_estimate
from visalign.token_rollout import gather_log_probs

RatioLevel = Literal["token", "sequence", "sequence_token"]
LossAgg = Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]
KLEstimator = Literal["k1", "k2", "k3"]
AdvantageMode = Literal["grpo", "dr_grpo", "rloo", "reinforce_pp"]


# ---- per-token log-probs and masked reductions -----------------------------------------------------------------


def sequence_log_probs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) at ``tokens``: ``[B, T, V]``, ``[B, T]`` -> ``[B, T]`` float32.

    The softmax is taken in float32 whatever the logits' dtype: in bfloat16 the log-probs of a 150k vocabulary are
    off by ~1e-2, which is larger than the clip ranges of GSPO. ``temperature`` must be the rollout's, so that the
    ratio of the first inner step is 1. The rollout's own computation (``token_rollout.gather_log_probs``)."""
    return gather_log_probs(logits, tokens, temperature)


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum of ``values`` where ``mask`` is set (masked entries are selected away, so they may be inf / nan)."""
    kept = torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean over the masked-in entries (along ``dim``, or all of them); 0 where there are none.

    Not ``common.masked_mean``: that one keeps the batch size as its denominator (masked samples count as zeros),
    this one divides by the number of entries the mask keeps, as a mean over a sequence's answer tokens must."""
    count = mask.to(values.dtype).sum() if dim is None else mask.to(values.dtype).sum(dim)
    return masked_sum(values, mask, dim) / count.clamp_min(1)


def aggregate_token_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    loss_agg: LossAgg,
    *,
    max_length: int | None = None,
    normalizer: float | None = None,
) -> torch.Tensor:
    """AGG of a ``[B, T]`` per-token loss (module docstring). ``normalizer`` replaces the outer denominator (B for
    the ``seq_*`` modes, sum_i L_i for ``token_mean``): a loss computed per micro-batch or per rank with the whole
    batch's count there sums to the whole batch's loss. Rows without answer tokens add 0 and still count in B."""
    if loss_agg == "seq_mean_token_mean":
        per_seq = masked_token_mean(per_token, mask, dim=-1)
        return per_seq.sum() / (normalizer if normalizer is not None else per_token.shape[0])
    if loss_agg == "token_mean":
        total = masked_sum(per_token, mask)
        count = normalizer if normalizer is not None else mask.to(per_token.dtype).sum().clamp_min(1)
        return total / count
    if loss_agg == "seq_mean_token_sum_norm":
        if max_length is None or max_length <= 0:
            raise ValueError("loss_agg='seq_mean_token_sum_norm' needs a constant max_length > 0 (Dr. GRPO)")
        per_seq = masked_sum(per_token, mask, dim=-1) / max_length
        return per_seq.sum() / (normalizer if normalizer is not None else per_token.shape[0])
    raise ValueError(f"unknown loss_agg '{loss_agg}' (seq_mean_token_mean, token_mean, seq_mean_token_sum_norm)")


# ---- the clipped objective ---------------------------------------------------------------------------------


def _clipped(advantages: torch.Tensor, ratio: torch.Tensor, clip_low: float, clip_high: float) -> torch.Tensor:
    """max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)): ``common.ppo_clip`` with an asymmetric range."""
    return torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high))


def token_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    ratio_level: RatioLevel = "token",
    loss_agg: LossAgg = "seq_mean_token_mean",
    kl_beta: float = 0.0,
    ref_log_probs: torch.Tensor | None = None,
    kl_estimator: KLEstimator = "k3",
    max_length: int | None = None,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO-family loss (module docstring) and its metrics.

    ``clip_high=None`` is the symmetric clip (``clip_low`` both sides). ``ref_log_probs`` is needed when
    ``kl_beta > 0``; given with ``kl_beta = 0`` the KL is only measured. ``max_length``: the constant of
    ``seq_mean_token_sum_norm``. ``normalizer``: see ``aggregate_token_loss``.

    Metrics: ``clip_frac/low`` (``/high``): the fraction of answer tokens (of sequences, at the sequence level) whose
    clip is active below (above), i.e. A < 0 and r < 1 - eps_low (A > 0 and r > 1 + eps_high), where the gradient is
    zero; ``log_ratio_abs_mean`` / ``log_ratio_abs_max``: |logp - logp_old| over answer tokens; ``kl``: the mean
    estimator over answer tokens; ``tokens``, ``sequences``, ``tokens/per_seq``."""
    if log_probs.shape != old_log_probs.shape or log_probs.shape != mask.shape or log_probs.dim() != 2:
        raise ValueError(f"log_probs, old_log_probs and mask must be [B, T] alike, got {tuple(log_probs.shape)}, "
                         f"{tuple(old_log_probs.shape)}, {tuple(mask.shape)}")
    clip_high = clip_low if clip_high is None else clip_high
    keep = mask.bool()
    zero = torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)
    old = old_log_probs.to(log_probs.dtype).detach()
    log_ratio = torch.where(keep, log_probs - old, zero)  # 0 on padding: exp of it is finite whatever padding holds
    lengths = keep.sum(-1)  # [B]
    adv = advantages.to(log_probs.dtype).detach()

    if ratio_level == "token":
        ratio = torch.exp(log_ratio)
        adv_t = adv if adv.dim() == 2 else adv[:, None]
        per_token = _clipped(adv_t, ratio, clip_low, clip_high)
        stat_ratio, stat_adv, stat_keep = ratio, adv_t.expand_as(ratio), keep
    elif ratio_level in ("sequence", "sequence_token"):
        log_seq_ratio = log_ratio.sum(-1) / lengths.clamp_min(1)  # [B]: (1 / L_i) sum_t log r_it
        if ratio_level == "sequence":
            if adv.dim() != 1:
                raise ValueError("ratio_level='sequence' takes one advantage per sequence [B]; "
                                 "per-token advantages need 'sequence_token' (GSPO-token)")
            seq_ratio = torch.exp(log_seq_ratio)
            # the sequence's loss on each of its tokens: the token mean of a sequence gives it back exactly
            per_token = _clipped(adv, seq_ratio, clip_low, clip_high)[:, None].expand_as(log_ratio)
            stat_ratio, stat_adv, stat_keep = seq_ratio, adv, lengths > 0
        else:
            # GSPO-token: s_it = sg[s_i] * pi(y_it) / sg[pi(y_it)], value s_i, gradient s_i grad log pi(y_it)
            token_lp = torch.where(keep, log_probs, zero)
            ratio = torch.exp(log_seq_ratio.detach()[:, None] + token_lp - token_lp.detach())
            adv_t = adv if adv.dim() == 2 else adv[:, None]
            per_token = _clipped(adv_t, ratio, clip_low, clip_high)
            stat_ratio, stat_adv, stat_keep = ratio, adv_t.expand_as(ratio), keep
    else:
        raise ValueError(f"unknown ratio_level '{ratio_level}' (token, sequence, sequence_token)")

    pg_loss = aggregate_token_loss(per_token, keep, loss_agg, max_length=max_length, normalizer=normalizer)
    loss = pg_loss
    metrics: dict[str, float] = {}
    if kl_beta > 0 and ref_log_probs is None:
        raise ValueError("kl_beta > 0 needs ref_log_probs")
    kl = None
    if ref_log_probs is not None:
        ref = torch.where(keep, ref_log_probs.to(log_probs.dtype).detach(), zero)
        kl = kl_estimate(torch.where(keep, log_probs, zero), ref, kl_estimator)  # 0 on padding
        if kl_beta > 0:
            kl_loss = aggregate_token_loss(kl, keep, loss_agg, max_length=max_length, normalizer=normalizer)
            loss = loss + kl_beta * kl_loss
            metrics["loss/kl"] = float(kl_loss.detach())

    with torch.no_grad():
        n_tokens = int(keep.sum())
        n_units = max(int(stat_keep.sum()), 1)
        kept_ratio = stat_ratio[stat_keep] if bool(stat_keep.any()) else torch.ones(1)
        low = (stat_adv < 0) & (stat_ratio < 1.0 - clip_low) & stat_keep
        high = (stat_adv > 0) & (stat_ratio > 1.0 + clip_high) & stat_keep
        abs_log_ratio = log_ratio.abs()
        metrics.update({
            "loss": float(loss.detach()),
            "loss/pg": float(pg_loss.detach()),
            "ratio/mean": float(kept_ratio.mean()),
            "ratio/min": float(kept_ratio.min()),
            "ratio/max": float(kept_ratio.max()),
            "clip_frac/low": float(low.sum()) / n_units,
            "clip_frac/high": float(high.sum()) / n_units,
            "clip_frac": float((low | high).sum()) / n_units,
            # the raw per-token log-ratio: the first-inner-step (on-policy) check reads it for every variant
            "log_ratio_abs_mean": float(abs_log_ratio.sum()) / max(n_tokens, 1),
            "log_ratio_abs_max": float(abs_log_ratio.max()) if n_tokens else 0.0,
            "approx_kl_old": float(0.5 * (log_ratio**2).sum()) / max(n_tokens, 1),
            "tokens": float(n_tokens),
            "sequences": float(int((lengths > 0).sum())),
            "tokens/per_seq": n_tokens / max(int((lengths > 0).sum()), 1),
        })  # fmt: skip
        if kl is not None:
            metrics["kl"] = float(kl.sum()) / max(n_tokens, 1)
    return loss, metrics


# ---- advantages and dynamic sampling -----------------------------------------------------------------------


def token_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    mode: AdvantageMode = "grpo",
    eps: float = 1e-4,
    zero_var_tol: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence advantages ``[N]`` float32 and the keep mask ``[N]`` bool (True for members of groups whose
    rewards vary, the ``advantages.Advantages.mask`` convention; members of zero-variance groups get advantage 0).

    With m_g, s_g the mean and population std of the rewards of i's group g (size G), over a batch of N:

    * ``grpo`` (Shao et al., 2024, arXiv:2402.03300): A_i = (R_i - m_g) / (s_g + eps); ``advantages.
      compute_advantages`` with its group std and no clip.
    * ``dr_grpo`` (Liu et al., 2025, arXiv:2503.20783): A_i = R_i - m_g.
    * ``rloo`` (Kool et al., 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"; Ahmadian et al., 2024,
      "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs",
      arXiv:2402.14740): the baseline of each sample is the mean of the other G - 1 of its group,
      A_i = R_i - (sum_g R - R_i) / (G - 1) = G / (G - 1) (R_i - m_g); 0 in groups of one.
    * ``reinforce_pp``: REINFORCE++-baseline (Hu et al., 2025, "REINFORCE++", arXiv:2501.03262, its variant for
      k > 1 samples per prompt): the group mean is subtracted, then the result is normalised over the whole batch,
      A~_i = R_i - m_g, A_i = (A~_i - mean_N A~) / (std_N A~ + eps), population std over all N sequences
      (zero-variance groups included, as zeros). mean_N A~ is 0 for complete groups; the subtraction keeps the
      whitening exact otherwise. Every sequence counts once here; OpenRLHF whitens over answer tokens, which weighs
      each sequence by its length.
    """
    r = rewards.detach().double().flatten()
    groups = group_ids.flatten()
    if r.shape != groups.shape:
        raise ValueError(f"rewards and group_ids must both be [N], got {tuple(rewards.shape)}, {tuple(group_ids.shape)}")
    if mode not in _MODES:
        raise ValueError(f"unknown advantage mode '{mode}' ({', '.join(_MODES)})")
    adv = compute_advantages({"reward": r}, groups, mode=_MODES[mode][0], std=_MODES[mode][1], clip=math.inf,
                             eps=eps, zero_var_tol=zero_var_tol)
    return adv.values, adv.mask


# token_advantages' modes as (advantages.compute_advantages mode, std)
_MODES = {"grpo": ("group", "group"), "dr_grpo": ("group", "none"), "rloo": ("rloo", "none"),
          "reinforce_pp": ("reinforce_pp", "none")}


def dynamic_sampling_keep(rewards: torch.Tensor, group_ids: torch.Tensor, tol: float = 1e-8) -> torch.Tensor:
    """DAPO's dynamic sampling (Yu et al., 2025, arXiv:2503.14476) as a filter ``[N]`` bool: True for the members
    of groups whose rewards are not all equal (with 0/1 rewards: 0 < accuracy < 1). The others have advantage 0
    under every mode above and only shrink the effective batch; DAPO samples further groups until the batch is
    full of kept ones."""
    return compute_advantages({"reward": rewards.detach().double().flatten()}, group_ids.flatten(), clip=math.inf,
                              zero_var_tol=tol).mask
