"""Multi-reward: the composite reward, asynchronous scoring (GDPO advantages: ``test_advantages.py``)."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from visalign.errors import UserError
from visalign.rewards import Reward, RewardError, build_reward
from visalign.rewards.async_scoring import AsyncRewardScorer


class Const(Reward):
    name = "const"

    def __init__(self, value: float = 1.0, delay: float = 0.0) -> None:
        self.value, self.delay, self.calls = value, delay, 0

    def score(self, images, prompts, metadata):  # type: ignore[no-untyped-def]
        self.calls += 1
        time.sleep(self.delay)
        return {"const": images.mean(dim=(1, 2, 3)) * 0 + self.value, "const/extra": images.mean(dim=(1, 2, 3))}


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
