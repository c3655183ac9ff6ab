"""Advantages against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from visalign.advantages import compute_advantages


def test_group_zscore_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 4.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = compute_advantages({"r": r}, groups)
    # group 0: mean 1/3, population std sqrt(2/9)
    s0 = math.sqrt(2 / 9)
    s1 = math.sqrt(8 / 3)
    expected = [(1 - 1 / 3) / (s0 + 1e-4), (-1 / 3) / (s0 + 1e-4), (-1 / 3) / (s0 + 1e-4),
                -2 / (s1 + 1e-4), 0.0, 2 / (s1 + 1e-4)]
    torch.testing.assert_close(adv.values, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert adv.mask.all() and adv.zero_var_groups == 0


def test_global_std_and_clip():
    r = torch.tensor([0.0, 1.0, 10.0, 10.25])
    groups = torch.tensor([0, 0, 1, 1])
    adv = compute_advantages({"r": r}, groups, std="global", clip=5.0)
    std = r.double().std(unbiased=False).item()
    assert adv.values[0].item() == pytest.approx(-0.5 / (std + 1e-4), rel=1e-5)
    assert adv.values[3].item() == pytest.approx(0.125 / (std + 1e-4), rel=1e-5)
    clipped = compute_advantages({"r": torch.tensor([0.0, 0, 0, 0, 0, 0, 0, 1])}, torch.zeros(8, dtype=torch.long))
    # the lone 1: (1 - 1/8) / sqrt(7/64) = 2.645...; with clip 2: 2.0
    assert clipped.values[-1].item() == pytest.approx((7 / 8) / (math.sqrt(7 / 64) + 1e-4), rel=1e-5)
    small = compute_advantages({"r": torch.tensor([0.0, 0, 0, 0, 0, 0, 0, 1])}, torch.zeros(8, dtype=torch.long), clip=2.0)
    assert small.values[-1].item() == 2.0


def test_zero_variance_groups_are_masked_and_counted():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    adv = compute_advantages({"r": r}, groups)
    assert adv.mask.tolist() == [False, False, True, True, False, False]
    assert adv.zero_var_groups == 2 and adv.num_groups == 3
    assert adv.zero_var_fraction == pytest.approx(2 / 3)
    assert adv.values[~adv.mask].abs().sum() == 0


def test_gdpo_normalises_each_reward_in_its_group_then_the_batch():
    a = torch.tensor([0.0, 1.0, 0.0, 3.0])
    b = torch.tensor([10.0, 30.0, 5.0, 5.5])
    groups = torch.tensor([0, 0, 1, 1])
    adv = compute_advantages({"a": a, "b": b}, groups, weights={"a": 1.0, "b": 2.0}, mode="gdpo")
    # within every group of two, each reward z-scores to (-1, +1) (up to eps); weighted sum:
    za = torch.tensor([-1.0, 1.0, -1.0, 1.0]) * (0.5 / (0.5 + 1e-4))
    za[2:] = torch.tensor([-1.0, 1.0]) * (1.5 / (1.5 + 1e-4))
    zb = torch.tensor([-1.0, 1.0, -1.0, 1.0])
    zb[:2] *= 10 / (10 + 1e-4)
    zb[2:] *= 0.25 / (0.25 + 1e-4)
    s = za + 2 * zb
    expected = (s - s.mean()) / (s.std(unbiased=False) + 1e-4)
    torch.testing.assert_close(adv.values, expected.float(), rtol=1e-5, atol=1e-5)
    # plain group mode on the weighted sum differs (the large-scale reward b dominates)
    plain = compute_advantages({"a": a, "b": b}, groups, weights={"a": 1.0, "b": 2.0})
    assert not torch.allclose(plain.values, adv.values)


def _batch_zscore(values: list[float], eps: float = 1e-4) -> list[float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return [(v - mean) / (std + eps) for v in values]


def test_gdpo_by_hand_with_a_zero_variance_reward_in_a_group():
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    r1 = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    r2 = torch.tensor([0.0, 0.0, 1.0, 2.0, 4.0, 0.0])
    adv = compute_advantages({"r1": r1, "r2": r2}, groups, weights={"r1": 1.0, "r2": 0.5}, mode="gdpo")
    eps = 1e-4
    # r1, group 0: mean 2, population std sqrt(2/3); group 1 has zero variance: 0 / (0 + eps) = 0.
    s1 = math.sqrt(2 / 3) + eps
    z1 = [-1 / s1, 0.0, 1 / s1, 0.0, 0.0, 0.0]
    # r2, group 0: mean 1/3, std sqrt(2)/3; group 1: mean 2, std sqrt(8/3).
    s2a, s2b = math.sqrt(2) / 3 + eps, math.sqrt(8 / 3) + eps
    z2 = [(-1 / 3) / s2a, (-1 / 3) / s2a, (2 / 3) / s2a, 0.0, 2 / s2b, -2 / s2b]
    expected = _batch_zscore([a + 0.5 * b for a, b in zip(z1, z2, strict=True)])
    torch.testing.assert_close(adv.values, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    # the combined reward r1 + r2 / 2 varies in both groups, so nobody is masked
    assert adv.mask.all() and adv.zero_var_groups == 0 and adv.num_groups == 2


def test_gdpo_keeps_a_large_scale_reward_from_dominating():
    # In group 0 the rewards disagree: "big" (std 2) prefers sample 1, "small" (std 0.5) sample 0. The plain
    # weighted sum follows "big"; GDPO weighs both alike, so they cancel (up to eps) and group 0 gets ~0.
    groups = torch.tensor([0, 0, 1, 1])
    big, small = torch.tensor([100.0, 104.0, 100.0, 104.0]), torch.tensor([1.0, 0.0, 0.0, 1.0])
    weights = {"big": 1.0, "small": 1.0}
    adv = compute_advantages({"big": big, "small": small}, groups, weights=weights, mode="gdpo")
    c2, c5 = 2 / (2 + 1e-4), 0.5 / (0.5 + 1e-4)  # each reward's z-score is +-1 times std / (std + eps)
    expected = _batch_zscore([-c2 + c5, c2 - c5, -c2 - c5, c2 + c5])
    torch.testing.assert_close(adv.values, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert adv.values[:2].abs().max() < 1e-3 and adv.values[3] > 1.4
    plain = compute_advantages({"big": big, "small": small}, groups, weights=weights)
    # the sum in group 0 is (101, 104): z-scores (-1, 1) up to eps
    torch.testing.assert_close(plain.values[:2], torch.tensor([-1.0, 1.0]) * (1.5 / (1.5 + 1e-4)))


def test_no_std_is_the_reward_minus_its_group_mean_by_hand():
    """Dr. GRPO: A_i = R_i - mean_group R, no division (clip still applies)."""
    rewards = {"r": torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5, 2.0])}
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = compute_advantages(rewards, groups, std="none")
    expected = [1 - 1 / 3, -1 / 3, -1 / 3, 0.5 - 1.0, 0.5 - 1.0, 2.0 - 1.0]
    assert adv.values.tolist() == pytest.approx(expected, abs=1e-6)


def test_bessel_corrected_group_std_by_hand():
    """DanceGRPO's reference: (R - mean) / (torch.std(R) + 1e-8), torch.std dividing by G - 1."""
    rewards = torch.tensor([1.0, 2.0, 5.0, 9.0, 0.0, 1.0, 3.0, 2.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = compute_advantages({"r": rewards}, groups, std_correction=1, eps=1e-8, clip=100.0)
    for g, values in ((0, [1.0, 2.0, 5.0, 9.0]), (1, [0.0, 1.0, 3.0, 2.0])):
        mean = sum(values) / 4
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
        expected = [(v - mean) / (std + 1e-8) for v in values]
        torch.testing.assert_close(adv.values[4 * g : 4 * g + 4], torch.tensor(expected), rtol=1e-6, atol=1e-6)
    population = compute_advantages({"r": rewards}, groups, eps=1e-8, clip=100.0)
    torch.testing.assert_close(population.values / adv.values, torch.full((8,), math.sqrt(4 / 3)))


def test_dancegrpo_defaults_to_its_references_std_unless_the_config_sets_it():
    from visalign.algorithms.base import registered_algorithms
    from visalign.config import AdvantageConfig

    dance, flow = registered_algorithms()["dancegrpo"], registered_algorithms()["flow_grpo"]
    settings = dance.advantage_settings(AdvantageConfig())
    assert (settings.std, settings.std_correction, settings.eps) == ("group", 1, 1e-8)
    assert dance.advantage_settings(AdvantageConfig(std_correction=0, eps=1e-3)).std_correction == 0
    assert flow.advantage_settings(AdvantageConfig()) == AdvantageConfig()
