"""Multi-reward: GDPO combination (hand-computed), the composite reward, asynchronous scoring."""

from __future__ import annotations

import io
import math
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from visalign.errors import UserError
from visalign.rewards import Reward, RewardError, build_reward
from visalign.rewards.async_scoring import AsyncRewardScorer
from visalign.rewards.composite import gdpo_combine


class Const(Reward):
    name = "const"

    def __init__(self, value: float = 1.0, delay: float = 0.0) -> None:
        self.value, self.delay, self.calls = value, delay, 0

    def score(self, images, prompts, metadata):  # type: ignore[no-untyped-def]
        self.calls += 1
        time.sleep(self.delay)
        return {"const": images.mean(dim=(1, 2, 3)) * 0 + self.value, "const/extra": images.mean(dim=(1, 2, 3))}


def test_gdpo_combine_hand_computed() -> None:
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    r1 = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    r2 = torch.tensor([0.0, 0.0, 1.0, 2.0, 4.0, 0.0])
    # r1, group 0: mean 2, population std sqrt(2/3) -> (-sqrt(1.5), 0, sqrt(1.5)); group 1 has zero variance -> 0.
    # r2, group 0: mean 1/3, std sqrt(2)/3 -> (-1/sqrt(2), -1/sqrt(2), sqrt(2));
    #     group 1: mean 2, std sqrt(8/3) -> (0, sqrt(1.5), -sqrt(1.5)).
    a, h = math.sqrt(1.5), 1 / math.sqrt(2)
    expected = torch.tensor([-a - 0.5 * h, -0.5 * h, a + 0.5 * math.sqrt(2), 0.0, 0.5 * a, -0.5 * a])
    out = gdpo_combine({"r1": r1, "r2": r2}, {"r1": 1.0, "r2": 0.5}, groups, eps=0.0)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # weights as a sequence in component order give the same thing; eps only shrinks slightly
    torch.testing.assert_close(gdpo_combine({"r1": r1, "r2": r2}, [1.0, 0.5], groups, eps=0.0), expected)
    assert torch.allclose(gdpo_combine({"r1": r1, "r2": r2}, [1.0, 0.5], groups), expected, atol=1e-3)


def test_gdpo_differs_from_normalising_the_sum() -> None:
    # a reward with a huge scale dominates the plain sum but not GDPO (each reward is normalised first)
    groups = torch.tensor([0, 0])
    big, small = torch.tensor([100.0, 101.0]), torch.tensor([1.0, 0.0])
    out = gdpo_combine({"big": big, "small": small}, None, groups, eps=0.0)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0]))  # (-1 + 1, 1 - 1)


def test_gdpo_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no weight for \\['b'\\]"):
        gdpo_combine({"a": torch.zeros(2), "b": torch.zeros(2)}, {"a": 1.0}, [0, 0])
    with pytest.raises(ValueError, match="shape"):
        gdpo_combine({"a": torch.zeros(3)}, None, [0, 0])


def test_composite_weighted_total_and_components() -> None:
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), np.zeros((16, 16, 3), np.uint8)]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    kb = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=95)
        kb.append(len(buf.getvalue()) / 1000)
    reward = build_reward(
        "composite", components=[{"name": "jpeg_incompressibility", "weight": 0.5}], rewards=[(Const(3.0), 2.0)]
    )
    out = reward(images, ["a", "b"])
    assert list(out) == ["composite", "const", "const/extra", "jpeg_incompressibility"]  # built objects first
    torch.testing.assert_close(out["composite"], 0.5 * torch.tensor(kb) + 6.0)
    torch.testing.assert_close(out["const/extra"], images.mean(dim=(1, 2, 3)))
    assert not reward.differentiable and not reward.groupwise


def test_composite_weights_override_and_errors() -> None:
    reward = build_reward("composite", components=["jpeg_compressibility"], weights={"jpeg_compressibility": 0.0})
    out = reward(torch.rand(2, 3, 8, 8), ["a", "b"])
    torch.testing.assert_close(out["composite"], torch.zeros(2))
    with pytest.raises(UserError, match="no components"):
        build_reward("composite")
    with pytest.raises(UserError, match="unknown components"):
        build_reward("composite", components=["jpeg_compressibility"], weights={"ocr": 1.0})
    with pytest.raises(UserError, match="duplicate component keys"):
        build_reward("composite", components=["jpeg_compressibility", "jpeg_compressibility"])


def test_async_scorer_overlaps_and_freezes_inputs() -> None:
    reward = Const(1.0, delay=0.3)
    images = torch.full((2, 3, 4, 4), 0.25)
    with AsyncRewardScorer(reward) as scorer:
        start = time.perf_counter()
        future = scorer.submit(images, ["a", "b"])
        assert time.perf_counter() - start < 0.2  # submit does not wait for the reward
        images.fill_(0.75)  # the rollout buffer is reused: the submitted batch must not change
        time.sleep(0.3)  # "the next rollout", overlapping the reward call
        out = future.result(timeout=5)
        elapsed = time.perf_counter() - start
    torch.testing.assert_close(out["const/extra"], torch.tensor([0.25, 0.25]))
    assert elapsed < 0.55, elapsed  # serial would be >= 0.6 s
    assert threading.active_count() >= 1


def test_async_scorer_propagates_errors_and_closes() -> None:
    class Boom(Reward):
        name = "boom"

        def score(self, images, prompts, metadata):  # type: ignore[no-untyped-def]
            return {"boom": torch.tensor([float("inf")] * images.shape[0])}

    scorer = AsyncRewardScorer(Boom())
    with pytest.raises(RewardError, match="reward 'boom'"):
        scorer.submit(torch.rand(1, 3, 4, 4), ["x"]).result(timeout=5)
    scorer.close()
    with pytest.raises(RuntimeError, match="closed"):
        scorer.submit(torch.rand(1, 3, 4, 4), ["x"])
