"""``visalign signal``: the per-sample SNR formula by hand, and a measurement that leaves the weights untouched."""

from __future__ import annotations

import math

import pytest
import torch

from engine_fixtures import tiny_trainer
from visalign.gradient_signal import (
    _shuffle_within_groups,
    measure,
    snr_from_cosine,
    summarise,
    within_group_sd,
)


def test_snr_from_cosine_by_hand():
    # cos = r n / (r n + 2)  <=>  r = 2 cos / (n (1 - cos)); at cos = 1/2 and n = 100: r = 1 / 50
    assert snr_from_cosine(0.5, 100) == pytest.approx(0.02)
    r, n = 1e-3, 256
    assert snr_from_cosine(r * n / (r * n + 2), n) == pytest.approx(r)
    assert snr_from_cosine(-0.01, 100) == 0.0 and snr_from_cosine(0.0, 100) == 0.0
    assert math.isinf(snr_from_cosine(1.0, 10))


def test_shuffling_permutes_rewards_inside_each_group_only():
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    scores = {"r": torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])}
    shuffled = _shuffle_within_groups(scores, groups, seed=0)["r"]
    assert sorted(shuffled[:3].tolist()) == [1.0, 2.0, 3.0] and sorted(shuffled[3:].tolist()) == [10.0, 20.0, 30.0]
    assert not torch.equal(shuffled, scores["r"])
    assert within_group_sd(scores["r"], groups) == pytest.approx((math.sqrt(2 / 3) + math.sqrt(200 / 3)) / 2)


def test_measuring_reads_rollouts_without_updating_the_weights(tmp_path):
    trainer = tiny_trainer(tmp_path, ["data.group_size=4", "data.prompts_per_iter=4"])
    before = [p.detach().clone() for p in trainer.generator.trainable_parameters()]
    rows = measure(trainer, rollouts=2, splits=3)
    assert [r.iteration for r in rows] == [1, 2] and all(r.samples == 16 for r in rows)
    assert all(-1.0 <= r.cosine <= 1.0 and r.per_sample_snr >= 0 for r in rows)
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.generator.trainable_parameters(), strict=True))
    assert all(p.grad is None for p in trainer.generator.trainable_parameters())
    summary = summarise(rows)
    assert summary["cosine"] == pytest.approx(sum(r.cosine for r in rows) / 2)
    assert summary["per_sample_snr"] == snr_from_cosine(summary["cosine"], 16)


def test_a_samples_scores_move_together_when_shuffled():
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    first = torch.arange(8, dtype=torch.float32)
    scores = {"a": first, "b": 10 * first}
    shuffled = _shuffle_within_groups(scores, groups, seed=3)
    torch.testing.assert_close(shuffled["b"], 10 * shuffled["a"])
