"""The GRPO family for token policies (language and vision-language models): GRPO, DAPO, Dr. GRPO and GSPO as
configurations of one loss (``_token_policy.token_policy_loss``; its docstring has every formula).

For a group of G answers y_i to one prompt, scored R_i, with per-token ratios r_it = pi_theta(y_it) / pi_old(y_it):

    A_i  = (R_i - mean_g R) / std_g R                                    (the trainer's group advantages)
    L    = AGG_it max(-A_i r_it, -A_i clip(r_it, 1 - eps_low, 1 + eps_high)) + beta AGG_it kl_k3(theta, ref)

* ``grpo``: Shao et al., 2024, "DeepSeekMath", arXiv:2402.03300 (eps 0.2, mean over each answer then over answers,
  beta 0.04 with the k3 estimator);
* ``dapo``: Yu et al., 2025, "DAPO", arXiv:2503.14476 (clip-higher eps_high 0.28, every token of the batch weighs
  the same, no KL; its dynamic sampling is the trainer's ``train.skip_zero_variance``, its overlong shaping the
  ``length_penalty`` reward);
* ``dr_grpo``: Liu et al., 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783 (token sums over a
  constant length, the generation budget ``sampling.max_new_tokens``; no std normalisation: ``advantage.std``);
* ``gspo``: Zheng et al., 2025, "Group Sequence Policy Optimization", arXiv:2507.18071 (the ratio of the whole
  answer, length-normalised, clipped per sequence at 3e-4 / 4e-4).

Each is an ``Options`` default set; every option can be changed in a recipe. The reference's log-probs (adapters
off, or the frozen copy) are computed only when ``kl_beta > 0``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field

from visalign.algorithms._token_policy import KLEstimator, LossAgg, RatioLevel, token_policy_loss
from visalign.algorithms.base import Algorithm, RunContext, register_algorithm
from visalign.config_io import StrictModel

if TYPE_CHECKING:
    from visalign.token_rollout import TokenBatch, TokenRollout


class TokenOptions(StrictModel):
    clip_low: float = Field(0.2, gt=0.0)
    clip_high: float | None = Field(None, gt=0.0)  # None: clip_low on both sides
    ratio_level: RatioLevel = "token"
    loss_agg: LossAgg = "seq_mean_token_mean"
    kl_beta: float = Field(0.04, ge=0.0)
    kl_estimator: KLEstimator = "k3"
    max_length: int | None = Field(None, ge=1)  # seq_mean_token_sum_norm's constant (None: sampling.max_new_tokens)


@register_algorithm("grpo")
class GRPO(Algorithm):
    approach = "policy gradient"
    paper = "DeepSeekMath (Shao et al., 2024, arXiv:2402.03300)"
    needs = frozenset({"tokens"})
    families = ("lm", "vlm")  # the token policies
    Options = TokenOptions

    def bind(self, context: RunContext) -> None:
        super().bind(context)
        self.max_length = self.options.max_length or context.max_new_tokens or None

    def micro_batches(self, rollout: TokenRollout, indices: torch.Tensor) -> Iterator[TokenBatch]:
        yield rollout.token_batch(indices)

    def loss(self, batch: TokenBatch, generator: Any) -> tuple[torch.Tensor, dict[str, float]]:
        o = self.options
        logp = generator.completion_log_probs(batch.input_ids, batch.attention_mask, batch.prompt_length, batch.extra)
        ref = None
        if o.kl_beta > 0:
            with torch.no_grad(), generator.reference():
                ref = generator.completion_log_probs(batch.input_ids, batch.attention_mask, batch.prompt_length,
                                                     batch.extra)
        advantages = batch.advantages.float() * batch.mask.float()  # a zero-variance group teaches nothing
        return token_policy_loss(logp, batch.old_log_probs, advantages, batch.completion_mask.float(),
                                 clip_low=o.clip_low, clip_high=o.clip_high, ratio_level=o.ratio_level,
                                 loss_agg=o.loss_agg, kl_beta=o.kl_beta, ref_log_probs=ref,
                                 kl_estimator=o.kl_estimator, max_length=self.max_length)


@register_algorithm("dapo")
class DAPO(GRPO):
    paper = "DAPO (Yu et al., 2025, arXiv:2503.14476)"

    class Options(TokenOptions):
        clip_high: float | None = Field(0.28, gt=0.0)
        loss_agg: LossAgg = "token_mean"
        kl_beta: float = Field(0.0, ge=0.0)


@register_algorithm("dr_grpo")
class DrGRPO(GRPO):
    paper = "Understanding R1-Zero-Like Training (Liu et al., 2025, arXiv:2503.20783)"

    class Options(TokenOptions):
        loss_agg: LossAgg = "seq_mean_token_sum_norm"
        kl_beta: float = Field(0.0, ge=0.0)


@register_algorithm("gspo")
class GSPO(GRPO):
    paper = "Group Sequence Policy Optimization (Zheng et al., 2025, arXiv:2507.18071)"

    class Options(TokenOptions):
        clip_low: float = Field(3e-4, gt=0.0)
        clip_high: float | None = Field(4e-4, gt=0.0)
        ratio_level: RatioLevel = "sequence"
        kl_beta: float = Field(0.0, ge=0.0)
