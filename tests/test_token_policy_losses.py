"""The token-policy GRPO family (``algorithms/_token_policy.py``) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from visalign.algorithms._token_policy import (
    aggregate_token_loss,
    dynamic_sampling_keep,
    masked_sum,
    masked_token_mean,
    sequence_log_probs,
    token_advantages,
    token_policy_loss,
)

# two answers of lengths 3 and 2 in a [2, 3] batch; the padding of the second holds garbage on purpose
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
LOG_PROBS = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, math.inf]])
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, math.nan]])


def _lp(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, requires_grad=True)


# ---- ratio 1: the loss is -AGG(A) --------------------------------------------------------------------------


def test_on_policy_loss_is_minus_aggregated_advantage_under_each_aggregation():
    adv = torch.tensor([1.5, -0.5])
    expected = {
        "seq_mean_token_mean": -(1.5 + -0.5) / 2,  # each sequence's mean, then the mean of the two
        "token_mean": -(1.5 * 3 + -0.5 * 2) / 5,  # every token weighs the same: length-weighted
        "seq_mean_token_sum_norm": -(1.5 * 3 / 4 + -0.5 * 2 / 4) / 2,  # token sums over L_max = 4
    }
    for agg, value in expected.items():
        for level in ("token", "sequence", "sequence_token"):
            loss, m = token_policy_loss(LOG_PROBS.clone().requires_grad_(), OLD, adv, MASK, ratio_level=level,
                                        loss_agg=agg, max_length=4)
            assert loss.item() == pytest.approx(value, abs=1e-6), (agg, level)
            assert m["log_ratio_abs_max"] == 0.0 and m["log_ratio_abs_mean"] == 0.0
            assert m["ratio/mean"] == pytest.approx(1.0) and m["clip_frac"] == 0.0
            assert m["tokens"] == 5 and m["sequences"] == 2 and m["tokens/per_seq"] == 2.5


def test_on_policy_equal_lengths_every_aggregation_gives_minus_mean_advantage():
    adv = torch.tensor([0.7, -0.2, 1.1])
    lp = torch.full((3, 4), -1.0)
    mask = torch.ones(3, 4)
    for agg in ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"):
        loss, _ = token_policy_loss(lp, lp, adv, mask, loss_agg=agg, max_length=4)
        assert loss.item() == pytest.approx(-(0.7 - 0.2 + 1.1) / 3, abs=1e-6)


# ---- clipping ------------------------------------------------------------------------------------------------


def test_clip_positive_and_negative_advantages_by_hand():
    # one token per sequence: (A, r) = (+1, 1.5) clipped at 1.2; (-1, 0.5) clipped at 0.8;
    # (+1, 0.5) and (-1, 1.5) unclipped (the pessimistic side of the min)
    ratios = [1.5, 0.5, 0.5, 1.5]
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    lp = _lp([[math.log(r)] for r in ratios])
    old = torch.zeros(4, 1)
    loss, m = token_policy_loss(lp, old, adv, torch.ones(4, 1), clip_low=0.2)
    per = [-1.2, 0.8, -0.5, 1.5]
    assert loss.item() == pytest.approx(sum(per) / 4, abs=1e-6)
    assert m["clip_frac/high"] == 0.25 and m["clip_frac/low"] == 0.25 and m["clip_frac"] == 0.5
    loss.backward()
    # d l / d logp = -A r where unclipped, 0 where clipped; 1/B from the mean over sequences
    expected = [0.0, 0.0, -1.0 * 0.5 / 4, 1.0 * 1.5 / 4]
    torch.testing.assert_close(lp.grad.flatten(), torch.tensor(expected), atol=1e-6, rtol=1e-6)


def test_clip_higher_lets_a_positive_token_grow_further():
    # (A, r) = (+1, 1.25): symmetric eps 0.2 clips it to -1.2; DAPO's eps_high 0.28 does not
    # (-1, 0.75): the low side clips at 0.8 either way
    adv = torch.tensor([1.0, -1.0])
    for clip_high, first in ((None, -1.2), (0.28, -1.25)):
        lp = _lp([[math.log(1.25)], [math.log(0.75)]])
        loss, m = token_policy_loss(lp, torch.zeros(2, 1), adv, torch.ones(2, 1), clip_low=0.2, clip_high=clip_high)
        assert loss.item() == pytest.approx((first + 0.8) / 2, abs=1e-6)
        loss.backward()
        assert lp.grad[0, 0].item() == pytest.approx(0.0 if clip_high is None else -1.25 / 2, abs=1e-6)
        assert lp.grad[1, 0].item() == 0.0
        assert m["clip_frac/high"] == (0.5 if clip_high is None else 0.0) and m["clip_frac/low"] == 0.5


def test_gradient_of_an_unclipped_and_a_clipped_token_and_of_padding():
    # one answer of two tokens, A = 1, eps 0.2: r = 1.1 (unclipped), r = 1.3 (clipped); a third, padded column
    lp = _lp([[math.log(1.1), math.log(1.3), 5.0]])
    old = torch.tensor([[0.0, 0.0, -math.inf]])
    mask = torch.tensor([[1, 1, 0]])
    loss, _ = token_policy_loss(lp, old, torch.tensor([1.0]), mask)
    assert loss.item() == pytest.approx(-(1.1 + 1.2) / 2, abs=1e-6)
    loss.backward()
    # d/d logp_0 of -(1/L) A r_0 = -r_0 / 2; the clipped token and the padding: 0
    torch.testing.assert_close(lp.grad, torch.tensor([[-1.1 / 2, 0.0, 0.0]]), atol=1e-6, rtol=1e-6)


def test_masked_tokens_get_zero_gradient_under_every_option():
    for level in ("token", "sequence", "sequence_token"):
        for agg in ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"):
            lp = LOG_PROBS.clone().requires_grad_()
            ref = torch.tensor([[-1.1, -1.9, -0.6], [-0.2, -1.0, math.nan]])
            loss, _ = token_policy_loss(lp + 0.05, OLD, torch.tensor([1.0, -1.0]), MASK, ratio_level=level,
                                        loss_agg=agg, max_length=3, kl_beta=0.1, ref_log_probs=ref)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(lp.grad).all(), (level, agg)
            assert lp.grad[1, 2].item() == 0.0
            assert (lp.grad[MASK.bool()] != 0).all()


# ---- aggregation ---------------------------------------------------------------------------------------------


def test_token_mean_and_seq_mean_differ_on_unequal_lengths_by_the_hand_amount():
    d0, d1 = [0.1, -0.1, 0.05], [0.02, -0.03]
    adv = torch.tensor([1.0, -2.0])
    lp = _lp([d0, d1 + [0.0]])
    kw = dict(clip_low=10.0)  # no clipping: l_it = -A_i r_it
    seq, _ = token_policy_loss(lp, torch.zeros(2, 3), adv, MASK, loss_agg="seq_mean_token_mean", **kw)
    tok, _ = token_policy_loss(lp, torch.zeros(2, 3), adv, MASK, loss_agg="token_mean", **kw)
    s0, s1 = sum(math.exp(x) for x in d0), sum(math.exp(x) for x in d1)
    expected_seq = (-1.0 * s0 / 3 + 2.0 * s1 / 2) / 2
    expected_tok = (-1.0 * s0 + 2.0 * s1) / 5
    assert seq.item() == pytest.approx(expected_seq, abs=1e-6)
    assert tok.item() == pytest.approx(expected_tok, abs=1e-6)
    assert seq.item() - tok.item() == pytest.approx(expected_seq - expected_tok, abs=1e-6)
    # the lengths matter: (-3.061 / 3 + 3.981 / 2) / 2 = 0.485 against (-3.061 + 3.981) / 5 = 0.184
    assert abs(expected_seq - expected_tok) > 0.25


def test_dr_grpo_divides_token_sums_by_the_constant():
    d = [[0.1, -0.2, 0.3], [0.05, 0.0, 0.0]]
    adv = torch.tensor([0.5, 1.0])
    lp = _lp(d)
    loss, _ = token_policy_loss(lp, torch.zeros(2, 3), adv, MASK, clip_low=10.0, loss_agg="seq_mean_token_sum_norm",
                                max_length=8)
    s0 = sum(math.exp(x) for x in d[0])
    s1 = math.exp(0.05) + math.exp(0.0)
    assert loss.item() == pytest.approx((-0.5 * s0 / 8 - 1.0 * s1 / 8) / 2, abs=1e-6)
    loss.backward()
    # every token's gradient -A r / (B L_max), whatever its answer's length
    expected = [[-0.5 * math.exp(x) / 16 for x in d[0]], [-math.exp(0.05) / 16, -1 / 16, 0.0]]
    torch.testing.assert_close(lp.grad, torch.tensor(expected), atol=1e-7, rtol=1e-6)
    # the same batch with a larger constant: the loss only rescales
    half, _ = token_policy_loss(lp, torch.zeros(2, 3), adv, MASK, clip_low=10.0,
                                loss_agg="seq_mean_token_sum_norm", max_length=16)
    assert half.item() == pytest.approx(loss.item() / 2, abs=1e-7)
    with pytest.raises(ValueError, match="max_length"):
        token_policy_loss(lp, torch.zeros(2, 3), adv, MASK, loss_agg="seq_mean_token_sum_norm")


def test_normalizer_makes_micro_batch_losses_sum_to_the_batch_loss():
    lp = torch.tensor([[0.1, -0.2, 0.3], [0.05, 0.1, 0.0], [0.2, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([1.0, -0.5, 2.0])
    old = torch.zeros(3, 3)
    for agg, count in (("token_mean", 6.0), ("seq_mean_token_mean", 3.0), ("seq_mean_token_sum_norm", 3.0)):
        whole, _ = token_policy_loss(lp, old, adv, mask, loss_agg=agg, max_length=3)
        parts = sum(token_policy_loss(lp[s], old[s], adv[s], mask[s], loss_agg=agg, max_length=3,
                                      normalizer=count)[0] for s in (slice(0, 2), slice(2, 3)))
        assert parts.item() == pytest.approx(whole.item(), abs=1e-6), agg


def test_masked_reductions_by_hand():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, math.nan]])
    assert masked_sum(v, MASK).item() == 15.0
    torch.testing.assert_close(masked_sum(v, MASK, dim=-1), torch.tensor([6.0, 9.0]))
    torch.testing.assert_close(masked_token_mean(v, MASK, dim=-1), torch.tensor([2.0, 4.5]))
    assert masked_token_mean(v, MASK).item() == 3.0
    assert masked_token_mean(v, torch.zeros(2, 3)).item() == 0.0  # no tokens: 0, not nan
    assert aggregate_token_loss(v, MASK, "seq_mean_token_mean").item() == pytest.approx((2.0 + 4.5) / 2)


# ---- GSPO ------------------------------------------------------------------------------------------------------


def test_gspo_sequence_ratio_and_clipping_by_hand():
    # seq 0: mean log-ratio 0.1 -> s = e^0.1 > 1 + 4e-4: clipped; seq 1: mean 3e-4 -> s = e^3e-4 < 1 + 4e-4: not
    d = [[0.3, -0.1, 0.1], [0.0002, 0.0004, 0.0]]
    adv = torch.tensor([1.0, 1.0])
    lp = _lp(d)
    loss, m = token_policy_loss(lp, torch.zeros(2, 3), adv, MASK, clip_low=3e-4, clip_high=4e-4,
                                ratio_level="sequence")
    s1 = math.exp(0.0003)
    assert loss.item() == pytest.approx((-(1 + 4e-4) - s1) / 2, abs=1e-6)
    assert m["ratio/max"] == pytest.approx(math.exp(0.1), rel=1e-6)
    assert m["clip_frac/high"] == 0.5 and m["clip_frac/low"] == 0.0
    assert m["log_ratio_abs_max"] == pytest.approx(0.3, rel=1e-6)
    loss.backward()
    # GSPO's gradient: s_i A_i (1 / |y_i|) grad log pi per token, / B; 0 for the clipped sequence and the padding
    expected = [[0.0, 0.0, 0.0], [-s1 / 4, -s1 / 4, 0.0]]
    torch.testing.assert_close(lp.grad, torch.tensor(expected), atol=1e-7, rtol=1e-6)


def test_gspo_clips_a_negative_advantage_below():
    # mean log-ratio -0.01: s = e^-0.01 < 1 - 3e-4 with A = -1: l = max(s, 1 - 3e-4) = 1 - 3e-4, no gradient
    lp = _lp([[-0.02, 0.0]])
    loss, m = token_policy_loss(lp, torch.zeros(1, 2), torch.tensor([-1.0]), torch.ones(1, 2), clip_low=3e-4,
                                clip_high=4e-4, ratio_level="sequence")
    assert loss.item() == pytest.approx(1 - 3e-4, abs=1e-7)
    assert m["clip_frac/low"] == 1.0
    loss.backward()
    assert lp.grad.abs().sum().item() == 0.0


def test_gspo_token_equals_gspo_in_value_and_gradient_and_takes_token_advantages():
    d = [[0.0001, -0.0002, 0.0003], [0.0002, 0.0001, 0.0]]
    adv = torch.tensor([0.5, -1.5])
    results = []
    for level in ("sequence", "sequence_token"):
        lp = _lp(d)
        loss, _ = token_policy_loss(lp, torch.zeros(2, 3), adv, MASK, clip_low=3e-4, clip_high=4e-4,
                                    ratio_level=level)
        loss.backward()
        results.append((loss.item(), lp.grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-7)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-7, rtol=1e-6)
    # per-token advantages: l_it = -A_it s_i, gradient -A_it s_i / (B L_i)
    a_tok = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
    lp = _lp(d)
    loss, _ = token_policy_loss(lp, torch.zeros(2, 3), a_tok, MASK, clip_low=3e-4, clip_high=4e-4,
                                ratio_level="sequence_token")
    s0, s1 = math.exp(0.0002 / 3), math.exp(0.0003 / 2)
    assert loss.item() == pytest.approx((-s0 * (1 + 2 + 3) / 3 - s1 * (-1 + 0.5) / 2) / 2, abs=1e-6)
    loss.backward()
    expected = [[-1 * s0 / 6, -2 * s0 / 6, -3 * s0 / 6], [1 * s1 / 4, -0.5 * s1 / 4, 0.0]]
    torch.testing.assert_close(lp.grad, torch.tensor(expected), atol=1e-7, rtol=1e-6)
    with pytest.raises(ValueError, match="sequence_token"):
        token_policy_loss(lp, torch.zeros(2, 3), a_tok, MASK, ratio_level="sequence")


# ---- KL to the reference ---------------------------------------------------------------------------------------


def test_k3_kl_is_zero_at_the_reference_and_its_hand_value_otherwise():
    lp = _lp([[-1.0, -2.0]])
    mask = torch.ones(1, 2)
    zero_adv = torch.zeros(1)
    loss, m = token_policy_loss(lp, lp.detach(), zero_adv, mask, kl_beta=0.1, ref_log_probs=lp.detach())
    assert loss.item() == 0.0 and m["kl"] == 0.0
    # ref - logp = -0.5 and +0.25: k3 = e^d - d - 1
    ref = torch.tensor([[-1.5, -1.75]])
    k3 = [math.exp(-0.5) + 0.5 - 1, math.exp(0.25) - 0.25 - 1]
    loss, m = token_policy_loss(lp, lp.detach(), zero_adv, mask, kl_beta=0.1, ref_log_probs=ref)
    assert m["kl"] == pytest.approx(sum(k3) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(0.1 * sum(k3) / 2, rel=1e-6)
    loss.backward()
    # d k3 / d logp = 1 - e^(ref - logp); 0.1 beta, 1/2 the token mean
    expected = [0.1 * (1 - math.exp(-0.5)) / 2, 0.1 * (1 - math.exp(0.25)) / 2]
    torch.testing.assert_close(lp.grad.flatten(), torch.tensor(expected), atol=1e-7, rtol=1e-6)


def test_k1_and_k2_estimators_by_hand():
    lp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.75]])
    _, m1 = token_policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 2), ref_log_probs=ref, kl_estimator="k1")
    assert m1["kl"] == pytest.approx((0.5 + -0.25) / 2, rel=1e-6)  # logp - ref
    loss, m2 = token_policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 2), ref_log_probs=ref, kl_estimator="k2",
                                 kl_beta=1.0)
    assert m2["kl"] == pytest.approx((0.25 / 2 + 0.0625 / 2) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(m2["kl"], rel=1e-6)
    with pytest.raises(ValueError, match="ref_log_probs"):
        token_policy_loss(lp, lp, torch.zeros(1), torch.ones(1, 2), kl_beta=0.1)


# ---- advantages --------------------------------------------------------------------------------------------------


REWARDS = torch.tensor([1.0, 0.0, 0.5, 2.0, 2.0, 3.0])
GROUPS = torch.tensor([0, 0, 0, 1, 1, 2])  # group 1 all equal, group 2 a single sample: both carry no signal


def test_rloo_baseline_by_hand():
    adv, keep = token_advantages(REWARDS, GROUPS, mode="rloo")
    # baselines: (0 + 0.5) / 2, (1 + 0.5) / 2, (1 + 0) / 2
    torch.testing.assert_close(adv, torch.tensor([1 - 0.25, 0 - 0.75, 0.5 - 0.5, 0.0, 0.0, 0.0]))
    assert keep.tolist() == [True, True, True, False, False, False]


def test_grpo_and_dr_grpo_advantages_by_hand():
    s = math.sqrt((0.5**2 + 0.5**2 + 0.0) / 3)  # population std of group 0
    adv, keep = token_advantages(REWARDS, GROUPS, mode="grpo")
    torch.testing.assert_close(adv, torch.tensor([0.5 / (s + 1e-4), -0.5 / (s + 1e-4), 0.0, 0.0, 0.0, 0.0]))
    assert keep.tolist() == [True, True, True, False, False, False]
    # no clipping of large z-scores: 1 of 8 right gives (7/8) / sqrt(7/64)
    lone, _ = token_advantages(torch.tensor([0.0] * 7 + [1.0]), torch.zeros(8, dtype=torch.long), eps=0.0)
    assert lone[-1].item() == pytest.approx(math.sqrt(7), rel=1e-6)
    adv, keep = token_advantages(REWARDS, GROUPS, mode="dr_grpo")
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.0, 0.0, 0.0, 0.0]))


def test_reinforce_pp_baseline_normalises_over_the_whole_batch():
    rewards = torch.tensor([1.0, 0.0, 0.5, 3.0, 1.0, 2.0, 2.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    adv, keep = token_advantages(rewards, groups, mode="reinforce_pp")
    centred = [0.5, -0.5, 0.0, 1.0, -1.0, 0.0, 0.0]  # reward minus group mean; its batch mean is 0
    std = math.sqrt(sum(c * c for c in centred) / 7)  # over all 7 sequences, the zero-variance group included
    torch.testing.assert_close(adv, torch.tensor([c / (std + 1e-4) for c in centred]))
    assert keep.tolist() == [True] * 5 + [False] * 2


def test_zero_variance_groups_are_masked_in_every_mode():
    for mode in ("grpo", "dr_grpo", "rloo", "reinforce_pp"):
        adv, keep = token_advantages(REWARDS, GROUPS, mode=mode)
        assert adv.dtype == torch.float32 and keep.dtype == torch.bool
        assert keep.tolist() == [True, True, True, False, False, False], mode
        assert adv[~keep].abs().sum().item() == 0.0
    with pytest.raises(ValueError, match="advantage mode"):
        token_advantages(REWARDS, GROUPS, mode="ppo")


def test_dynamic_sampling_keeps_groups_with_mixed_rewards():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    groups = torch.tensor([7, 7, 3, 3, 5, 5, 3, 7])  # unsorted, interleaved ids
    # group 7: (1, 1, 0) mixed; group 3: (0, 1, 1) mixed; group 5: (0, 0) all wrong
    assert dynamic_sampling_keep(rewards, groups).tolist() == [True, True, True, True, False, False, True, True]
    assert dynamic_sampling_keep(torch.ones(4), torch.tensor([0, 0, 1, 1])).tolist() == [False] * 4


# ---- log-probs ------------------------------------------------------------------------------------------------


def test_sequence_log_probs_match_a_float64_computation():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 3, 11, generator=g) * 4).to(torch.bfloat16)
    tokens = torch.randint(0, 11, (2, 3), generator=g)
    got = sequence_log_probs(logits, tokens)
    assert got.dtype == torch.float32 and got.shape == (2, 3)
    x = logits.double()
    want = torch.empty(2, 3, dtype=torch.float64)
    for b in range(2):
        for t in range(3):
            row = x[b, t]
            want[b, t] = row[tokens[b, t]] - math.log(sum(math.exp(v) for v in row.tolist()))
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    hot = sequence_log_probs(logits, tokens, temperature=0.7)
    want_hot = torch.log_softmax(x / 0.7, -1).gather(-1, tokens[..., None])[..., 0]
    torch.testing.assert_close(hot.double(), want_hot, atol=1e-5, rtol=0)


# ---- the papers' settings -------------------------------------------------------------------------------------


def test_the_registered_variants_carry_their_papers_settings():
    from visalign.algorithms import build_algorithm

    dapo, gspo = build_algorithm("dapo").options, build_algorithm("gspo").options
    grpo, dr = build_algorithm("grpo").options, build_algorithm("dr_grpo").options
    assert (dapo.clip_low, dapo.clip_high, dapo.loss_agg, dapo.kl_beta) == (0.2, 0.28, "token_mean", 0.0)
    assert (gspo.clip_low, gspo.clip_high, gspo.ratio_level) == (3e-4, 4e-4, "sequence")
    assert grpo.kl_beta == 0.04 and grpo.kl_estimator == "k3"
    assert dr.loss_agg == "seq_mean_token_sum_norm"
    for name in ("grpo", "dapo", "dr_grpo", "gspo"):
        algo = build_algorithm(name)
        o = algo.options
        assert "arXiv:" in algo.paper
        ref = LOG_PROBS if o.kl_beta > 0 else None
        loss, m = token_policy_loss(LOG_PROBS.clone().requires_grad_(), OLD, torch.tensor([1.0, -1.0]), MASK,
                                    ref_log_probs=ref, max_length=3, clip_low=o.clip_low, clip_high=o.clip_high,
                                    ratio_level=o.ratio_level, loss_agg=o.loss_agg, kl_beta=o.kl_beta,
                                    kl_estimator=o.kl_estimator)
        assert torch.isfinite(loss) and m["log_ratio_abs_max"] == 0.0, name


def test_rloo_and_reinforce_pp_are_advantage_modes_of_a_run():
    import torch

    from visalign.advantages import compute_advantages
    from visalign.config import load_train_config

    assert load_train_config(None, ["advantage.mode=rloo"]).advantage.mode == "rloo"
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    rloo = compute_advantages({"r": rewards}, groups, mode="rloo")
    # by hand: the first answer's baseline is the mean of the other two (0), the second's (1 + 0) / 2
    torch.testing.assert_close(rloo.values, torch.tensor([1.0, -0.5, -0.5, -1.0, 0.5, 0.5]))
    clipped = compute_advantages({"r": rewards}, groups, mode="rloo", clip=0.75)
    torch.testing.assert_close(clipped.values, torch.tensor([0.75, -0.5, -0.5, -0.75, 0.5, 0.5]))
    pp = compute_advantages({"r": rewards}, groups, mode="reinforce_pp").values.double()
    centred = torch.tensor([2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3], dtype=torch.float64)
    torch.testing.assert_close(pp, (centred - centred.mean()) / (centred.std(unbiased=False) + 1e-4),
                               rtol=1e-6, atol=1e-6)
