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
